"""The fleet's job database unreachable: /retrain and /jobs say so (503), predictions go on."""

from __future__ import annotations

import httpx

from harness.processes import free_port
from harness.servers import bento_server
from tests.utils.jobs import auth
from tests.utils.load import GOOD

TOKEN = "jobs-down-token-3c"


def test_unreachable_job_database_is_a_clear_503_and_predictions_are_untouched(
    trained_home, tmp_path, record_property
):
    nobody = f"postgresql://iris:hunter2@127.0.0.1:{free_port()}/jobs"  # nothing listens
    env = {**trained_home.env, "IRIS_ADMIN_TOKEN": TOKEN, "IRIS_JOBS_URI": nobody}
    with bento_server(env, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        answers = {
            "POST /retrain": client.post("/retrain", headers=auth(TOKEN), timeout=30),
            "GET /jobs": client.get(
                "/jobs", headers=auth(TOKEN), timeout=30, follow_redirects=True
            ),
            "GET /jobs/{id}": client.get("/jobs/0123abcd", headers=auth(TOKEN), timeout=30),
        }
        for route, answer in answers.items():
            assert answer.status_code == 503, (route, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "jobs_unavailable", (route, error)
            assert "job database is unreachable" in error["message"]
            assert answer.headers["retry-after"] == "5", route
            assert "hunter2" not in answer.text
        # Auth still comes first: no token, no hint about the database.
        assert client.post("/retrain", timeout=30).status_code == 401
        predicted = client.post("/predict", json=GOOD, timeout=30)
        assert predicted.status_code == 200 and predicted.json()["species"] == "Iris-setosa"
        assert client.get("/readyz", timeout=30).status_code == 200
        assert "hunter2" not in server.log()
    record_property(
        "reliability",
        "job database unreachable: "
        + ", ".join(f"{route} {a.status_code}" for route, a in answers.items())
        + f" (jobs_unavailable); /predict {predicted.status_code}, /readyz 200",
    )
