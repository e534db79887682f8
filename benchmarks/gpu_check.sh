#!/usr/bin/env bash
# The GPU check on a bare GPU machine, from a checkout (no pip install of braintl): installs
# pydantic from .whl/ into /tmp/site when it is missing, then runs benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh [--data DIR] [--out DIR] [--workers N] [--weights-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pydantic" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        pip install --quiet --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "pydantic is not installed and .whl/ holds no wheels: pip install pydantic" >&2
        exit 1
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec python3 benchmarks/gpu_check.py "$@"
