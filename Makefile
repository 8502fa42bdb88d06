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

.PHONY: install data train evaluate score serve mlflow-ui test bench clean-venv help

help:
	@echo "make install | data | train [DATA= OUTCOME= SEED= ON_INVALID=] | evaluate [DATA=] |"
	@echo "     score DATA= OUT= | serve [HOST= PORT= WORKERS=] | mlflow-ui | test | bench"

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed

data: install
	$(BIN)/icans-risk generate $(if $(N),--n $(N)) $(if $(SEED),--seed $(SEED)) $(if $(OUT),--out $(OUT))

train: install
	$(BIN)/icans-risk train --outcome $(OUTCOME) --on-invalid $(ON_INVALID) \
		$(if $(DATA),--data $(DATA)) $(if $(SEED),--seed $(SEED)) $(if $(N),--n $(N))

evaluate: install
	$(BIN)/icans-risk evaluate --outcome $(OUTCOME) --on-invalid $(ON_INVALID) $(if $(DATA),--data $(DATA))

score: install
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make score DATA=in.csv OUT=out.csv"; exit 2; }
	$(BIN)/icans-risk score --data $(DATA) --out $(OUT) --on-invalid $(ON_INVALID)

# One thread per worker: xgboost's OpenMP threads would otherwise oversubscribe 2 cores.
# A fresh clone serves in development mode (no API keys); AUTH=on requires keys
# (`icans-risk keys create --client NAME --scope score`).
AUTH ?= off
serve: install
	@if [ "$(AUTH)" = "off" ]; then echo "make serve: development mode, authentication OFF (AUTH=on to require API keys)"; fi
	ICANS_AUTH=$(AUTH) OMP_NUM_THREADS=1 $(BIN)/icans-risk serve --train-if-missing --host $(HOST) --port $(PORT) --workers $(WORKERS)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--host $(HOST) --port $(MLFLOW_PORT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.run $(if $(QUICK),--quick)

clean-venv:
	rm -rf $(VENV)
