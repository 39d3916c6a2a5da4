# The two quickstart commands (README.md): `make repro` and `make test`.
# Both create .venv when missing and install the exact versions of constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
# PyTorch threads spin while waiting by default; on a shared or small CPU that alone
# made saliency ~10x slower. Passive waiting costs nothing measurable when idle.
export OMP_WAIT_POLICY := PASSIVE
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# PyTorch's Linux wheels bring its CUDA libraries (~2.6 GiB to download, ~5 GiB installed).
# A one-off install keeps nothing in pip's cache: where a registry's answers are cacheable
# it would hold a second copy of every wheel (here they are not: the same 8.3 GiB peak was
# measured with and without the cache).
PIP_INSTALL := -m pip install --quiet --no-cache-dir

.PHONY: install repro test lock clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# sam2 (segment.backend sam2) is a source archive whose build imports torch: build it
	# against the pinned torch of this venv (build isolation would fetch another torch)
	# and without its optional CUDA extension (only hole filling in masks uses it).
	$(BIN)/python $(PIP_INSTALL) -c constraints.txt setuptools torch torchvision
	SAM2_BUILD_CUDA=0 $(BIN)/python $(PIP_INSTALL) --no-build-isolation -c constraints.txt sam2
	$(BIN)/python $(PIP_INSTALL) -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The whole pipeline on the embedded default, then its metrics.
repro: install
	dvc repro
	dvc metrics show

# The lint and format gate (ruff, configured in pyproject.toml), then the test suite
# (unit tests and a few end-to-end dvc repro runs on tiny params).
test: install
	ruff check .
	ruff format --check .
	python -m pytest

# Re-pin every package after changing install_requires in setup.cfg.
lock: install
	{ head -2 constraints.txt; python -m pip freeze --all --exclude pip --exclude-editable | grep -vi '^protomask'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean-venv:
	rm -rf $(VENV)
