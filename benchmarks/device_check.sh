#!/usr/bin/env bash
# The accelerator check, for a machine with an NVIDIA GPU and JAX (CUDA) preinstalled, no downloads.
# Carry .device (made by `python -m benchmarks.device_check --prepare .device` on a CPU machine).
# A dry run on a CPU: bash benchmarks/device_check.sh --batches 64 --sweep-images 20 --cnn-batches 16
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=${DEVICE_DIR:-.device}
# the image's JAX lives in a venv that a plain `python` may not be (seen on the H200 image: /opt/torch/.venv)
for venv in /opt/torch/.venv /opt/*/.venv; do
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import jax" 2>/dev/null && { export PATH="$venv/bin:$PATH"; break; }
done
python -c "import jaxopt" 2>/dev/null || pip install --no-deps --no-index -q "$DEV"/wheels/jaxopt-*.whl
python -c "import flax, optax" || { echo "flax/optax missing on this machine"; exit 1; }
pip install --no-deps --no-build-isolation -q -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export INTRIGUING_JAX_DATA="$DEV"
timeout 470 python -m benchmarks.device_check --check "$DEV" "$@"
