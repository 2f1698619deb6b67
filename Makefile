# Two set-up commands: `make demo` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Tests and benchmarks read the real datasets from here (../shared/datasets beside the checkout).
export CNNLAB_TEST_DATA ?= $(abspath ../shared/datasets)

.PHONY: install browser demo serve test benchmarks clean

# TORCH_INDEX=https://download.pytorch.org/whl/cpu: PyTorch's CPU-only wheels first (about 200 MB of torch where
# PyPI's default Linux wheel brings some 3 GB of CUDA libraries); the install below keeps them, as they satisfy it.
TORCH_INDEX ?=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --disable-pip-version-check torch torchvision \
	  --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

# The web page for the run folders under runs/ (make demo writes two), at http://127.0.0.1:8000/.
serve: $(STAMP)
	$(BIN)/cnnlab serve runs

# The suite, then the tests marked `dispatch` (training whose numbers depend on the CPU's arithmetic) again
# with PyTorch and oneDNN limited to AVX2: no AVX-512, AMX or native bf16, as on most users' CPUs, so a
# developer's newer CPU checks the common case too. tests/test_dispatch.py fails that run if the limit did
# not take. The limit names x86-64 instruction sets; other CPUs run the suite once.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q
ifeq ($(shell uname -m),x86_64)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -m dispatch
endif

# The report's browser test opens report.html in Chromium: Debian's package, installed where apt-get
# can run (as root, or with sudo that asks no password). Elsewhere the test is skipped and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || { command -v apt-get >/dev/null 2>&1 \
	       && $(SUDO) apt-get update -qq \
	       && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "note: Chromium could not be installed here; the report's browser test will be skipped"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis *.egg-info
