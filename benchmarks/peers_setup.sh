#!/usr/bin/env bash
# The peers' own virtual environments for benchmarks/peers.py, under benchmarks/.peers.
# optimum-onnx pins transformers<4.58 and optimum-intel pins optimum 2.3 / transformers 5.5, which
# clash with edgevl's transformers>=5 and with each other. Each venv reuses edgevl's venv for
# torch, onnxruntime, openvino and nncf (a .pth line), and gets the pinned peer packages installed
# over it (--no-deps --ignore-installed: nothing in edgevl's venv is touched).
set -euo pipefail
cd "$(dirname "$0")"
BASE="$(cd .. && pwd)/.venv/lib/python3.11/site-packages"
[ -d "$BASE" ] || { echo "peers_setup: no edgevl venv at $BASE; run 'make setup' first" >&2; exit 2; }

make_venv() {  # name, pinned packages...
    local dir=".peers/$1"; shift
    python3 -m venv "$dir"
    echo "$BASE" > "$dir/lib/python3.11/site-packages/zz_edgevl_venv.pth"
    "$dir/bin/pip" install -q --no-deps --ignore-installed "$@"
}

COMMON=(certifi==2026.10.19.post1 charset-normalizer==3.5.3 requests==2.34.2 tokenizers==0.22.2 urllib3==2.8.0)
make_venv optimum "${COMMON[@]}" huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0 transformers==4.57.6
# optimum-intel lists torchvision; the CLIP export does not use it, and a torchvision build that
# does not match the pinned torch breaks transformers' imports, so it is left out.
make_venv optimum-intel "${COMMON[@]}" httpcore==1.0.9 httpx==0.29.0 huggingface_hub==1.21.0 \
    openvino-tokenizers==2026.4.1.0 optimum==2.3.0 optimum-intel==2.2.0 transformers==5.5.4 typer==0.25.1
echo "peers_setup: venvs ready under $(pwd)/.peers"
