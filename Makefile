# The two commands in README.md do all the set-up: `make demo` and `make test`.
# torch is pinned through constraints.txt so pip never pulls a multi-GB CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.edgevl-installed
OUT    ?= out/demo

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Export the embedded default model to ONNX and verify it on real photos and captions.
demo: $(STAMP)
	$(VENV)/bin/edgevl export --target onnx --out $(OUT) --force

## The whole test suite (real ONNX Runtime, OpenVINO, real weights and photos).
test: $(STAMP)
	$(PY) -m pytest -q -ra

## Everything but the end-to-end exports of real models.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/onnx_int8.py
	$(PY) benchmarks/openvino_int8.py

clean:
	rm -rf $(VENV) out .pytest_cache
