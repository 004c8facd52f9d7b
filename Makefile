# make test  — creates .venv (torch==2.13.0 CPU, the package with its test extra) and runs the whole suite.
# make demo  — runs the main job on its embedded default and writes demo/controlnet_demo.png;
#              with COMFYUI_PATH set it also queues workflows/*.api.json in the real host (demo/host/).
# make bench — side-by-side cost ratios (set COMFYUI_PATH to include the host's native ControlNet).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow'

demo: $(STAMP)
	$(PY) -m controlnet_core demo --out demo/controlnet_demo.png
	@if [ -n "$$COMFYUI_PATH" ]; then $(PY) -m tests.host.demo --out demo/host; \
	else echo "(set COMFYUI_PATH to a ComfyUI checkout to also queue workflows/*.api.json in the real host)"; fi

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo .pytest_cache
