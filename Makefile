# The two Quickstart commands: `make demo` (the main job) and `make test`.
# Both create .venv and install the pinned requirements on first use.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) train.py --config=configs/demo.py --workdir=workdir/demo

test: $(VENV)/.installed
	$(PYTHON) -m pytest
