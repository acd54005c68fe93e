# themetune: make install | demo | test | mlflow | bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip takes these two from local disk on the CI machine; elsewhere pick the build you
# need, e.g. make install TORCH_SPEC="torch torchvision --index-url ..."
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_CONFIGS := configs/demo

.PHONY: install demo test mlflow bench bench-quick clean

install: $(STAMP)

# The stamp makes a second `make install` instant while pyproject.toml is unchanged.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(PY) manage.py migrate --noinput -v 0
	theme_id=$$($(PY) manage.py import_demo_theme --exist-ok | tail -n 1) && \
	$(PY) launch.py --configs $(DEMO_CONFIGS) --theme-id $$theme_id

test: install
	$(PY) -m pytest

mlflow: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5001

bench: install
	$(PY) -m bench.overhead

bench-quick: install
	$(PY) -m bench.overhead --quick

clean:
	rm -rf ray_results .cache/themetune
