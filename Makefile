# The commands of the README: `make demo` (TASK=det|seg|face), `make test` and `make compare`
# (TASK=det|seg|face|det-ablation|det-hard|face-hard: DRConv against its baseline over 3 seeds on
# a demo's data; det-hard and face-hard on the harder synthetic variants).
# All create .venv here on first use and install requirements.txt and the toolkit into it. mmcv 2.1.0 is
# compiled with its ops on first install (~30 min on 2 cores) unless a wheelhouse named in
# PIP_FIND_LINKS holds a matching wheel.
PYTHON ?= python3
VENV ?= .venv
TASK ?= det
PY := $(VENV)/bin/python
# Idle OpenMP threads sleep instead of spinning: on CPUs shared with other jobs, spinning threads
# slow torch down many times over. Set OMP_WAIT_POLICY=ACTIVE to override.
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: venv test demo compare

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==2.13.0" "setuptools<82" wheel ninja numpy
	MMCV_WITH_OPS=1 MAX_JOBS=2 $(PY) -m pip install --no-build-isolation -r requirements.txt
	# the toolkit itself, editable: drconv and its glue drconv_mm (the plugins/ folder)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q

demo: venv
	@test -f tools/demo/$(TASK).sh || { echo "make demo: no demo for TASK=$(TASK); use det, seg or face" >&2; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo/$(TASK).sh

compare: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo/compare.sh $(TASK)
