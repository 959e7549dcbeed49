#!/usr/bin/env bash
# Create .venv and install mcr-swift with everything it needs (CPU machine or GPU machine).
#   bash tools/setup.sh               # CPU: torch/torchvision pair that works with ms-swift 4.6 here
#   MCR_TORCH="" bash tools/setup.sh  # keep whatever torch the environment resolves (GPU images)
#   MCR_EXTRAS=test,vllm bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${MCR_EXTRAS:-test}
if [ -z "${MCR_TORCH+x}" ]; then
  case "$(uname -m)" in
    x86_64) MCR_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
    *)      MCR_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  esac
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
if [ -n "$MCR_TORCH" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $MCR_TORCH
fi
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
echo "[setup] mcr-swift installed in $VENV in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "import swift, transformers, torch; print('[setup] ms-swift', swift.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)"
