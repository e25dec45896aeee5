#!/usr/bin/env bash
# Measure the serving pod's memory, per process, to size its requests and limits.
#
#     scripts/k8s/measure-memory.sh IMAGE [SECONDS]
#
# Runs IMAGE with podman as the Deployment runs it (read-only root, UID 1034, no
# capabilities, writable IRIS_HOME / BENTOML_HOME / /tmp, a 2-CPU quota, so BentoML starts
# two workers), on 127.0.0.1 ports of its own. While 16 clients send predictions (one in
# four a 10,000-row batch) for SECONDS (default 40), it posts a /retrain, whose new
# champion every worker then loads. Prints each process's largest RSS and the largest sum
# over the container, sampled every 0.2 s. Results: docs/deploy-kubernetes.md.
set -euo pipefail

image="${1:?usage: scripts/k8s/measure-memory.sh IMAGE [SECONDS]}"
seconds="${2:-40}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
# shellcheck source-path=SCRIPTDIR source=../container/env.sh
. "$root/scripts/container/env.sh"

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http="$(free_port)"
grpc="$(free_port)"
token="$(openssl rand -hex 16)"
name="iris-measure-$$"

cid="$(podman run -d --name "$name" --network host --cpus 2 \
    --read-only --read-only-tmpfs=false --user 1034:1034 --cap-drop ALL \
    --security-opt no-new-privileges \
    --tmpfs /tmp:rw,mode=1777 --tmpfs /var/lib/bentoml:rw,mode=1777 \
    --tmpfs /home/bentoml/state:rw,mode=1777 \
    -e BENTOML_HOME=/var/lib/bentoml -e MPLCONFIGDIR=/tmp/matplotlib \
    -e IRIS_GRPC_HOST=127.0.0.1 -e IRIS_GRPC_PORT="$grpc" -e IRIS_RELOAD_INTERVAL_S=2 \
    -e IRIS_ADMIN_TOKEN="$token" \
    "$image" serve --host 127.0.0.1 --port "$http")"
trap 'podman rm -f "$cid" >/dev/null' EXIT

for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
    sleep 1
done

# The sampler runs inside the container, for SECONDS + 45 (the retrain and reloads included).
podman exec "$cid" bash -c '
    end=$((SECONDS + '"$((seconds + 45))"')); max=0; declare -A peak
    while [ $SECONDS -lt $end ]; do
        total=0
        for p in /proc/[0-9]*; do
            rss=$(awk "/^VmRSS/ {print \$2}" "$p/status" 2>/dev/null) || continue
            [ -n "$rss" ] || continue
            cmd=$(tr "\0\n" "  " <"$p/cmdline" 2>/dev/null | cut -d" " -f2-4)
            [ -n "${cmd// /}" ] || continue  # exited meanwhile
            total=$((total + rss))
            [ "${peak[$cmd]:-0}" -ge "$rss" ] || peak[$cmd]=$rss
        done
        [ $total -le $max ] || max=$total
        sleep 0.2
    done
    for cmd in "${!peak[@]}"; do printf "%8d MiB  %s\n" $((peak[$cmd] / 1024)) "$cmd"; done | sort -rn
    echo "largest sum over the container: $((max / 1024)) MiB"
' &
sampler=$!

curl -fsS -X POST "http://127.0.0.1:$http/retrain" -H "Authorization: Bearer $token" >/dev/null
"$python" - "$http" "$seconds" <<'PY'
import concurrent.futures as cf
import sys
import time

import httpx

port, seconds = int(sys.argv[1]), float(sys.argv[2])
one = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
batch = {"instances": [[5.1, 3.5, 1.4, 0.2]] * 10_000}


def client(i: int) -> int:
    done, end = 0, time.monotonic() + seconds
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        while time.monotonic() < end:
            r = c.post("/predict_batch", json=batch) if i % 4 == 0 else c.post("/predict", json=one)
            r.raise_for_status()
            done += 1
    return done


with cf.ThreadPoolExecutor(16) as pool:
    print(f"{sum(pool.map(client, range(16)))} requests in {seconds:.0f} s, all 200")
PY
wait "$sampler"
podman logs "$cid" 2>&1 | grep -c "Now serving" | sed 's/^/champion reloads during the run: /'
