# themetune: make install | demo | test | test-fast | lint | web | mlflow | bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip takes these two from local disk on the CI machine; elsewhere pick the build you
# need, e.g. make install TORCH_SPEC="torch torchvision --index-url ..."
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_CONFIGS := configs/demo

.PHONY: install demo test test-fast lint mlflow bench bench-quick clean postgres

install: $(STAMP)

# The stamp makes a second `make install` instant while pyproject.toml and the lock are
# unchanged. requirements.lock (cluster/lock.sh) pins every dependency but torch: the
# tests run with the versions cluster/Dockerfile puts in the node image.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock $(TORCH_SPEC)
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

demo: install
	$(PY) manage.py migrate --noinput -v 0
	theme_id=$$($(PY) manage.py import_demo_theme --exist-ok | tail -n 1) && \
	$(PY) launch.py --configs $(DEMO_CONFIGS) --theme-id $$theme_id

# The whole suite, what CI runs: lint first (seconds), then every test. Most of a
# test's time is spent waiting (Ray and servers starting, trials, subprocesses), so
# three workers share the 2 cores; a file's tests stay on one worker (--dist loadfile),
# which keeps module fixtures (a cluster, a finished study) built once, in the order
# tests/conftest.py gives (xdist would reorder by test count). TEST_WORKERS=0
# runs it in one process.
TEST_WORKERS ?= 3
test: install browser postgres lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The edit-test loop: unit and in-process tests only (no Ray, browser, multi-node
# cluster, PostgreSQL or other slow test); a few minutes on 2 cores.
FAST := not ray and not browser and not cluster and not postgres and not slow
test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "$(FAST)"

lint: install
	$(VENV)/bin/ruff check .

MLFLOW_PORT ?= 5001
mlflow: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# Each benchmark prints its table and, as its last line, one JSON object; a failing one
# does not stop the others, but makes the target fail. packing skips without a GPU.
BENCHES := loop data overhead time_to_accuracy packing scale

bench: install
	@status=0; for b in $(BENCHES); do echo "== bench.$$b"; \
	  $(PY) -m bench.$$b || status=1; done; exit $$status

bench-quick: install
	@status=0; for b in $(BENCHES); do echo "== bench.$$b --quick"; \
	  $(PY) -m bench.$$b --quick || status=1; done; exit $$status

clean:
	rm -rf ray_results .cache/themetune

# ---------------------------------------------------------------- web UI
.PHONY: web browser messages

# The web UI on 127.0.0.1:$(WEB_PORT) (`make web WEB_PORT=8001` to move it) with the
# embedded defaults (SQLite db.sqlite3, MLflow in mlflow.db, a local Ray per study); its
# MLflow links point at `make mlflow`'s port unless MLFLOW_UI_URL is set. First run: migrates, imports the demo digits theme,
# and asks for the first (admin) user on a terminal. The studies' watchdog (watch_studies)
# runs beside the server and stops with it.
# Development mode for this target only: web/settings.py defaults to production (DEBUG
# off, HTTPS redirect, collectstatic's files, DJANGO_SECRET_KEY required to serve).
WEB_PORT ?= 8000
MLFLOW_UI_URL ?= http://127.0.0.1:$(MLFLOW_PORT)
web: export DJANGO_DEBUG := true
web: export MLFLOW_UI_URL := $(MLFLOW_UI_URL)
web: install
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py web_setup --demo-theme
	$(PY) manage.py watch_studies & watcher=$$!; trap 'kill $$watcher' EXIT INT TERM; \
	  $(PY) manage.py runserver 127.0.0.1:$(WEB_PORT)

# Debian's chromium for the browser tests (Playwright's own browser download does not
# work here), and a Japanese font so that the Japanese pages' screenshots show text,
# not boxes; nothing to do when both are there.
browser:
	(test -x /usr/bin/chromium && fc-list :lang=ja | grep -q .) || \
	  (apt-get update && apt-get install -y chromium fonts-ipafont-gothic)

# A PostgreSQL server for the tests that stop and restart one mid-study (they start
# their own, as the postgres user, in a temp dir).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update && apt-get install -y postgresql)

# Japanese UI texts: refresh the catalogue, fill it from web/locale/ja_translations.py, compile.
messages: install
	$(PY) manage.py makemessages -l ja --ignore=.venv --ignore=tests --ignore=tuning \
	  --ignore=bench --ignore=cluster --ignore=runs --ignore=media --ignore=staticfiles \
	  --ignore=test-output
	$(PY) web/locale/ja_translations.py
	$(PY) manage.py compilemessages -l ja --ignore=.venv

# A real multi-node Ray cluster on this machine (head + WORKERS workers, token auth on,
# dashboard on 127.0.0.1:8265): see cluster/local.sh --help and README "Running on a cluster".
WORKERS ?= 2
.PHONY: cluster-up cluster-down cluster-status test-cluster
cluster-up: install
	cluster/local.sh up --workers $(WORKERS)

cluster-down:
	cluster/local.sh down

cluster-status:
	cluster/local.sh status

test-cluster: install
	$(PY) -m pytest tests/cluster
