# Every target runs inside the project's virtualenv (.venv), created by `make install`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
MLFLOW_PORT ?= 5000
OUTCOME ?= severe_icans
ON_INVALID ?= refuse
DATA ?=
OUT ?=
SEED ?=
N ?=

.PHONY: docs docs-serve install browser lint test-fast data train update monitor evaluate score serve mlflow-ui mlflow-server test test-cohorts bench clean-venv help

help:
	@echo "make install | data | train [DATA= OUTCOME= SEED= ON_INVALID= ALLOW_UNGATED=1 PROMOTE=no] | update DATA= | evaluate [DATA=] |"
	@echo "     score DATA= OUT= | serve [HOST= PORT= WORKERS=] | mlflow-ui | mlflow-server | test | test-cohorts | bench"

# Each step says what it does and how long it took (about 90 s in all on a fresh 2-core machine).
$(BIN)/.installed: pyproject.toml constraints.txt
	@echo "make install 1/4: creating the virtualenv $(VENV)"; t0=$$(date +%s); \
	  $(PYTHON) -m venv $(VENV) && echo "  done in $$(( $$(date +%s) - t0 )) s"
	@echo "make install 2/4: pip 26.3"; t0=$$(date +%s); \
	  $(BIN)/pip install --quiet --upgrade "pip==26.3" && echo "  done in $$(( $$(date +%s) - t0 )) s"
	@echo "make install 3/4: the project and its pinned dependencies (constraints.txt; about a minute)"; \
	  t0=$$(date +%s); $(BIN)/pip install --quiet -c constraints.txt -e ".[dev]" \
	  && echo "  done in $$(( $$(date +%s) - t0 )) s"
	@echo "make install 4/4: compiling the interval kernels into numba's cache (no compile at first load)"; \
	  t0=$$(date +%s); $(BIN)/python -c "from models.ensemble import warm_up; warm_up()" \
	  && echo "  done in $$(( $$(date +%s) - t0 )) s"
	@touch $@

install: $(BIN)/.installed

data: install
	$(BIN)/icans-risk generate $(if $(N),--n $(N)) $(if $(SEED),--seed $(SEED)) $(if $(OUT),--out $(OUT))

train: install
	$(BIN)/icans-risk train --outcome $(OUTCOME) --on-invalid $(ON_INVALID) \
		$(if $(DATA),--data $(DATA)) $(if $(SEED),--seed $(SEED)) $(if $(N),--n $(N)) \
		$(if $(filter 1 true yes,$(ALLOW_UNGATED)),--allow-ungated) \
		$(if $(filter 0 false no,$(PROMOTE)),--no-promote)

# Local updating at a new centre: validate @champion on DATA and register the smallest justified update.
update: install
	@test -n "$(DATA)" || { echo "usage: make update DATA=site.csv [OUTCOME=]"; exit 2; }
	$(BIN)/icans-risk update --data $(DATA) --outcome $(OUTCOME) --on-invalid $(ON_INVALID)

# Drift of the served version's audited answers against its development data, as an MLflow run.
monitor: install
	$(BIN)/icans-risk monitor $(if $(SINCE),--since $(SINCE)) $(if $(UNTIL),--until $(UNTIL))

evaluate: install
	$(BIN)/icans-risk evaluate --outcome $(OUTCOME) --on-invalid $(ON_INVALID) $(if $(DATA),--data $(DATA))

# Issue 27 (docs/multi-centre.md): pool centres' summaries (icans-risk evaluate --summary OUT.json),
# and internal-external cross-validation of a multi-centre file on its own (make train runs it too).
.PHONY: meta iecv
meta: install
	@test -n "$(SUMMARIES)" || { echo "usage: make meta SUMMARIES='a.json b.json' [VERSION=]"; exit 2; }
	$(BIN)/icans-risk meta $(SUMMARIES) $(if $(VERSION),--version $(VERSION))

iecv: install
	@test -n "$(DATA)" || { echo "usage: make iecv DATA=consortium.csv [OUTCOME=] [ICANS_CLUSTER=local]"; exit 2; }
	$(BIN)/icans-risk iecv --data $(DATA) --outcome $(OUTCOME) --on-invalid $(ON_INVALID)

score: install
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make score DATA=in.csv OUT=out.csv"; exit 2; }
	$(BIN)/icans-risk score --data $(DATA) --out $(OUT) --on-invalid $(ON_INVALID)

# One thread per worker: xgboost's OpenMP threads would otherwise oversubscribe 2 cores.
# A fresh clone serves in development mode (no API keys); AUTH=on requires keys
# (`icans-risk keys create --client NAME --scope score`).
# With MLFLOW_TRACKING_URI set (the production profile: `make mlflow-server`, deploy/README.md)
# authentication is on by default and nothing is trained on start: the champion must exist.
AUTH ?= $(if $(MLFLOW_TRACKING_URI),on,off)
TRAIN_IF_MISSING ?= $(if $(MLFLOW_TRACKING_URI),,--train-if-missing)
# Live reload is on: every RELOAD_S seconds the service asks the registry where @champion points and
# swaps in a newly promoted version (RELOAD_S=0 turns it off; the log says which).
RELOAD_S ?= 30
serve: install
	@if [ "$(AUTH)" = "off" ]; then echo "make serve: development mode, authentication OFF (AUTH=on to require API keys)"; fi
	@if [ "$(RELOAD_S)" = "0" ]; then echo "make serve: live reload OFF (a newly promoted @champion is served after a restart or POST /v1/admin/reload)"; \
	  else echo "make serve: live reload on, @champion checked every $(RELOAD_S) s"; fi
	ICANS_AUTH=$(AUTH) ICANS_RELOAD_INTERVAL_S=$${ICANS_RELOAD_INTERVAL_S:-$(RELOAD_S)} OMP_NUM_THREADS=1 $(BIN)/icans-risk serve $(TRAIN_IF_MISSING) --host $(HOST) --port $(PORT) --workers $(WORKERS)

# The production profile on one host: MLflow's tracking server with a PostgreSQL backend store
# and proxied artifacts in a local directory (an object store in a real deployment). Point the
# trainers and the service at it with MLFLOW_TRACKING_URI=http://$(HOST):$(MLFLOW_PORT) and
# ICANS_ARTIFACT_ROOT=mlflow-artifacts:/ (deploy/README.md). The database is created if missing.
MLFLOW_BACKEND_STORE_URI ?= postgresql+psycopg://postgres@127.0.0.1:5432/icans_mlflow
MLFLOW_ARTIFACTS_DESTINATION ?= $(CURDIR)/mlartifacts-server
mlflow-server: install
	$(BIN)/python deploy/ensure_database.py "$(MLFLOW_BACKEND_STORE_URI)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server \
		--backend-store-uri "$(MLFLOW_BACKEND_STORE_URI)" \
		--artifacts-destination "$(MLFLOW_ARTIFACTS_DESTINATION)" --serve-artifacts \
		--host $(HOST) --port $(MLFLOW_PORT) --workers 1

# The UI over the local store, as light as mlflow-server: one worker, no job runner (its GenAI jobs
# are not used here). `python -m bench.mlflow_ui` measures its start time and memory.
mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--host $(HOST) --port $(MLFLOW_PORT) --workers 1

test: install browser lint
	$(BIN)/python -m pytest

# The inner loop: code and data tests without the trainings (about a minute).
test-fast: install
	$(BIN)/python -m pytest tests/code tests/data -m "not slow" -q

# Pyflakes-level checks (pyproject.toml [tool.ruff]), types (mypy on core, models, pipeline, serving, cli:
# pyproject.toml [tool.mypy]) and the layer rule (tests/code/test_layers.py).
lint: install
	$(BIN)/ruff check core models pipeline serving cli bench tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/code/test_layers.py

# Headless Chromium and its driver for tests/e2e/test_browser.py, from Debian's packages (needs root
# and apt-get); where they cannot be installed, those tests are skipped and say why.
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1; } || \
	  echo "note: Debian's chromium and chromium-driver could not be installed: the browser tests will be skipped"

# The property-based cohort suite at length: 40 drawn cohorts of up to 5,000 patients (~30-60 min).
test-cohorts: install
	HYPOTHESIS_PROFILE=cohorts $(BIN)/python -m pytest tests/model/test_real_cohorts.py

# wrk (Debian package) drives the HTTP load; without it the runner uses its Python load generator.
bench: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
		|| echo "wrk could not be installed: bench falls back to its Python load generator"
	$(BIN)/python -m bench.run $(if $(QUICK),--quick)
	$(if $(QUICK),,$(BIN)/python -m bench.load_reload --seconds 60 --rate 100)
	$(if $(QUICK),,$(BIN)/python -m bench.soak --seconds 600 --rate 60 --kill-every 60)
	$(if $(QUICK),,$(BIN)/python -m bench.instability)
	$(if $(QUICK),,$(BIN)/python -m bench.instability_speed)

# The documentation site from docs/ (mkdocs, material theme): built strictly (every link and anchor
# checked) into site/, or served offline on 127.0.0.1:8001.
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001 --no-livereload

clean-venv:
	rm -rf $(VENV)
