# Two commands on a fresh machine: `make run` (the app on the bundled demo) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
DEMO := data/demo.h5ad
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run serve test venv browser demo bench bench-gpu clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-data.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==25.3
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	$(BIN)/czb warmup
	touch $@

$(DEMO): | venv
	$(BIN)/czb demo --out $(DEMO)

demo: $(DEMO)

run: venv $(DEMO)
	CZB_DEMO=$(DEMO) STREAMLIT_SERVER_MAX_UPLOAD_SIZE=$${CZB_MAX_UPLOAD_MB:-2048} \
		$(BIN)/streamlit run app.py --server.port $(PORT)

# Production: headless, no file watcher, no usage stats, no tracebacks for users (a request id instead),
# XSRF on, upload cap from CZB_MAX_UPLOAD_MB, on CZB_HOST:CZB_PORT; GET /health on 127.0.0.1:CZB_HEALTH_PORT.
# It starts only with login configured ([auth] in .streamlit/secrets.toml), or with CZB_SINGLE_USER=1 (one
# person, no login), which listens on 127.0.0.1 only; `python -m czb_core.service.identity` decides and
# prints the address.
serve: venv
	address=$$($(BIN)/python -m czb_core.service.identity) && \
	CZB_HEALTH_PORT=$${CZB_HEALTH_PORT:-8502} $(BIN)/streamlit run app.py \
		--server.address $$address --server.port $${CZB_PORT:-8501} \
		--server.headless true --server.fileWatcherType none --browser.gatherUsageStats false \
		--client.showErrorDetails none --client.toolbarMode minimal \
		--server.enableXsrfProtection true --server.enableCORS true \
		--server.maxUploadSize $${CZB_MAX_UPLOAD_MB:-2048}

# Debian's Chromium for the end-to-end tests (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

test: venv browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

bench: venv
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f; done

bench-gpu:
	PYTHONPATH=. python3 benchmarks/gpu_suite.py

clean:
	rm -rf $(VENV) $(DEMO)
