# make test      — creates .venv (torch + torchvision, the package with its test extra) and runs the core suite.
# make test-host — creates .venv-host (the host's own interpreter: torch + torchvision, ComfyUI's requirements
#                  without torchaudio, requests, this pack's requirements.txt) and runs tests/host against the real
#                  ComfyUI at COMFYUI_PATH (default ../shared/comfyui/ComfyUI); a skipped host test fails the run.
# make demo      — trains the toy ControlNet from the committed base (~1.5 min) and writes demo/controlnet_demo.png;
#                  with COMFYUI_PATH set it also queues workflows/api/*.json in the real host (demo/host/).
# make bench     — side-by-side cost ratios (set COMFYUI_PATH to include the host's native ControlNet).
# make test-browser — the real editor in Debian's Chromium (apt-get install chromium when missing; Playwright's
#                  Python package drives it, no browser download) against the host's pinned frontend and the
#                  newest comfyui-frontend-package wheel (unpacked into .browser/); screenshots in .browser/screenshots.
PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
HOST_VENV ?= .venv-host
HOST_PY   := $(HOST_VENV)/bin/python
HOST_STAMP := $(HOST_VENV)/.installed
# The registry's default torch with the torchvision built for it (controlnet-aux, timm and the host import
# torchvision; the local CPU-only torch 2.13.0 wheel has no matching torchvision). Both run on the CPU here.
TORCH     := torch==2.14.1 torchvision==0.29.1
COMFYUI_PATH ?= $(if $(wildcard ../shared/comfyui/ComfyUI/main.py),../shared/comfyui/ComfyUI,)

.PHONY: test test-fast test-host test-browser demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# The host's interpreter is built from the host's own requirements.txt (read where it lies; it may be read-only).
$(HOST_STAMP): requirements.txt constraints.txt
	@test -n "$(COMFYUI_PATH)" || { echo "make test-host: set COMFYUI_PATH=/path/to/ComfyUI (no ../shared/comfyui/ComfyUI here)"; exit 2; }
	$(PYTHON) -m venv $(HOST_VENV)
	$(HOST_PY) -m pip install -q --upgrade pip
	$(HOST_PY) -m pip install -q -c constraints.txt $(TORCH)
	grep -v -E '^\s*(torchaudio|#|$$)' $(COMFYUI_PATH)/requirements.txt > $(HOST_VENV)/host-requirements.txt
	$(HOST_PY) -m pip install -q -c constraints.txt -r $(HOST_VENV)/host-requirements.txt requests -r requirements.txt
	touch $(HOST_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/host --ignore=tests/browser

test-fast: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/host --ignore=tests/browser -m "not slow"

test-host: $(STAMP) $(HOST_STAMP)
	COMFYUI_PATH="$(abspath $(COMFYUI_PATH))" COMFYUI_PYTHON="$(abspath $(HOST_PY))" CONTROLNET_CORE_REQUIRE_HOST=1 \
		$(PY) -m pytest -q -m "not soak" tests/host

# make soak — 50 prompts queued at once in the real host, 3 mixed controls each (tests/host/test_soak.py): all
#             complete, a sample re-run equals them, resident memory flat. Too long for test-host's CI budget.
.PHONY: soak
soak: $(STAMP) $(HOST_STAMP)
	COMFYUI_PATH="$(abspath $(COMFYUI_PATH))" COMFYUI_PYTHON="$(abspath $(HOST_PY))" CONTROLNET_CORE_REQUIRE_HOST=1 \
		$(PY) -m pytest -q -m soak tests/host/test_soak.py

NEWEST_FRONTEND ?= 1.58.1
FRONTEND_DIR := .browser/frontend-$(NEWEST_FRONTEND)

$(FRONTEND_DIR)/comfyui_frontend_package/static/index.html:
	mkdir -p $(FRONTEND_DIR)
	$(PY) -m pip download -q --no-deps -d $(FRONTEND_DIR) comfyui-frontend-package==$(NEWEST_FRONTEND)
	$(PY) -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
		$(FRONTEND_DIR)/comfyui_frontend_package-$(NEWEST_FRONTEND)-py3-none-any.whl $(FRONTEND_DIR)

test-browser: $(STAMP) $(HOST_STAMP) $(FRONTEND_DIR)/comfyui_frontend_package/static/index.html
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	COMFYUI_PATH="$(abspath $(COMFYUI_PATH))" COMFYUI_PYTHON="$(abspath $(HOST_PY))" CONTROLNET_CORE_REQUIRE_HOST=1 \
		CONTROLNET_CORE_NEWEST_FRONTEND="$(abspath $(FRONTEND_DIR))/comfyui_frontend_package/static" \
		$(PY) -m pytest -q tests/browser

demo: $(STAMP)
	$(PY) -m controlnet_core demo --out demo/controlnet_demo.png
	@if [ -n "$$COMFYUI_PATH" ]; then $(PY) -m tests.host.demo --out demo/host; \
	else echo "(set COMFYUI_PATH to a ComfyUI checkout to also queue workflows/api/*.json in the real host)"; fi

bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.union_lora_bench

clean:
	rm -rf $(VENV) $(HOST_VENV) demo .pytest_cache
