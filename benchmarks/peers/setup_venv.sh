#!/usr/bin/env bash
# Build the peer venv for benchmarks/peers/nncf_peer.py (idempotent: an existing venv with the right
# versions is left as it is). Usage: bash benchmarks/peers/setup_venv.sh [VENV_DIR]
# NNCF stays out of edgedistill's own dependencies; this venv has no torch (nncf 3.4.0 does not need it).
set -euo pipefail
VENV=${1:-/work/venvs/ptq-peers}
PINS="nncf==3.4.0 onnx==1.23.2 onnxruntime==1.32.0 sympy==1.14.0"  # sympy: ORT's quant_pre_process defaults
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
if ! "$VENV/bin/python" - $PINS <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(any(version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
except PackageNotFoundError:
    sys.exit(1)
PY
then
    "$VENV/bin/pip" install --quiet $PINS
fi
"$VENV/bin/python" -c "import importlib.util as u, nncf, onnx, onnxruntime; assert u.find_spec('torch') is None, 'torch in the peer venv'; print('peer venv', '$VENV', 'nncf', nncf.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
