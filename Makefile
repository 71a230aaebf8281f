# The two commands in README.md do all the set-up: `make demo` and `make test`.
# torch is pinned through constraints.txt so pip never pulls a multi-GB CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.edgevl-installed
OUT    ?= out/demo
WEB    := apps/web

.PHONY: setup demo test test-fast bench clean browser stamps

$(STAMP): pyproject.toml constraints.txt apps/runtime/pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -e apps/runtime
	touch $(STAMP)

## The browser page's packages from its lock file (npm ci), and Debian's chromium where it is
## missing and this user may install it; otherwise the browser tests skip and say why.
$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	@if command -v npm >/dev/null; then cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error \
	  || echo "npm ci failed (no registry?): the browser page's tests will skip"; \
	else echo "npm not found: the browser page's tests will skip (apt-get install npm)"; fi

browser: $(WEB)/node_modules/.package-lock.json
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
	  || echo "chromium not found and not installable here: the browser tests will skip (apt-get install chromium)"

## Debian's Tux Paint stamps (hundreds of object photos with captions for the calibration, gate
## and parity splits) where missing and this user may install them; otherwise the splits read the
## package photos alone and the manifest's pool record says so.
stamps:
	@[ -d /usr/share/tuxpaint/stamps ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq tuxpaint-stamps-default >/dev/null 2>&1; } \
	  || echo "tuxpaint-stamps-default not found and not installable here: the data splits read the package photos alone (apt-get install tuxpaint-stamps-default)"

setup: $(STAMP) browser stamps

## Export the embedded default model to ONNX and verify it on real photos and captions.
demo: $(STAMP) stamps
	$(VENV)/bin/edgevl export --target onnx --out $(OUT) --force

## The whole test suite (real ONNX Runtime, OpenVINO, real weights and photos).
test: $(STAMP) browser stamps
	$(PY) -m pytest -q -ra --durations=25

## Everything but the end-to-end exports of real models.
test-fast: $(STAMP) browser stamps
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/onnx_int8.py
	$(PY) benchmarks/openvino_int8.py

clean:
	rm -rf $(VENV) out .pytest_cache $(WEB)/node_modules
