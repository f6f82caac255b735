# The two Quickstart commands: `make demo` (the main job) and `make test`.
# Both create .venv and install the pinned requirements on first use.
VENV := .venv
PYTHON := $(VENV)/bin/python
# XLA:CPU page-faults each step's temporary buffers in again on glibc's malloc (up to a
# quarter of a CPU train step; bit_jax/host_allocator.py); tcmalloc keeps them mapped.
# Preloaded when installed (Debian/Ubuntu: libtcmalloc-minimal4); optional.
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 \
                                    /usr/lib/libtcmalloc_minimal.so.4))
RUN := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC) )$(PYTHON)

.PHONY: demo test accelerators

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

demo: $(VENV)/.installed
	$(RUN) train.py --config=configs/demo.py --workdir=workdir/demo

# Two workers, each test file on one (its fixtures set up once), files with the most tests
# first (xdist's order); on 2 cores a third worker makes the run slower.
# pytest-randomly is off here; `pytest -p randomly --randomly-seed=N` checks any order.
test: $(VENV)/.installed
	$(RUN) -m pytest -n 2 --dist loadfile --durations=15 -p no:randomly

# The TPU and GPU compilers (requirements-accelerators.txt: libtpu, the CUDA plugin; 1.2 GB),
# for `python benchmarks/memory.py --target=...` and tests/test_accelerator_compile.py. Into
# .accelerators/, outside the venv's default imports: a plugin there would make every JAX
# process probe for a TPU or GPU. Only the compiling process puts it on its path.
accelerators: .accelerators/.installed

.accelerators/.installed: requirements-accelerators.txt $(VENV)/.installed
	rm -rf .accelerators
	$(VENV)/bin/pip install --quiet --no-deps --target .accelerators -r requirements-accelerators.txt
	touch $@
