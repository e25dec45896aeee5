# Two commands a newcomer needs:  `make run` (train → register → import → serve)  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
STAMP  := $(VENV)/.installed

.PHONY: install run train serve build test lint format bench docs clean proto conformance

install: $(STAMP)

# Exact versions come from requirements.lock (a constraints file), ranges from pyproject.toml.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

run: train serve ## Main job: train, register, import the champion, then serve on $(PORT).

train: install
	$(BIN)/iris-train run

serve: install
	$(BIN)/bentoml serve service:IrisClassifier --host 0.0.0.0 --port $(PORT)

build: install ## Build the Bento (after `make train`).
	$(BIN)/bentoml build

test: install ## The whole suite: lint, unit, integration, container.
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2

# Part of `make test`; this runs it alone. The clients get a venv of their own (see its conftest).
conformance: install ## Open Inference Protocol clients (tritonclient, kserve) against a real server.
	$(BIN)/python -m pytest -n 0 tests/conformance

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Options go through BENCH_ARGS, e.g. make bench BENCH_ARGS="--duration 3 --profile-seconds 0",
# and OIP_BENCH_ARGS for the MLServer comparison (python -m benchmarks.oip_peer --help).
bench: install ## Load our service and its peers with wrk; see benchmarks/README.md.
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.oip_peer $(OIP_BENCH_ARGS)  # V2 REST/gRPC against MLServer
	$(BIN)/python -m scripts.gen_docs  # docs/performance.md's tables from the new results

# Tables in docs/ generated from the code and the committed results (scripts/gen_docs.py);
# tests/unit/test_docs.py fails when one is stale.
docs: install ## Regenerate the generated sections of docs/ (settings, errors, CLI, benchmarks).
	$(BIN)/python -m scripts.gen_docs

clean:
	rm -rf $(VENV) mlflow.db mlruns data/processed data/.processed-* logs var

proto: install ## Regenerate the Open Inference Protocol stubs from the committed .proto.
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
		serving/oip/proto/grpc_predict_v2.proto
