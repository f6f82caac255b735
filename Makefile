# The two Quickstart commands: `make demo` (the main job) and `make test`.
# Both create .venv and install the pinned requirements on first use.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PYTHON) -m bit_jax.smoke

test: $(VENV)/.installed
	$(PYTHON) -m pytest
