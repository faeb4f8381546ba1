#!/usr/bin/env bash
# The GPU check of lit_advgame: run it when a GPU machine is available (under 8 minutes on one GPU).
#
#     bash scripts/device_check.sh                   # install what is missing, then every check on the GPU(s)
#     bash scripts/device_check.sh --no-install      # the environment has the dependencies already
#     bash scripts/device_check.sh --cpu --tiny --no-install --no-tests   # the CPU smoke run (a test runs it)
#
# Steps (scripts/device_check.py): `pytest -m cuda` (the tests that need CUDA); PGD+IR on torchvision
# ResNet-34 (random init) at 224x224, 4 images x 10 steps, in fp32, bf16 and bf16 + channels_last (seconds per
# image per 100 steps vs the IR paper's 12.9 s on a Titan RTX); the multi-order estimator's masked evaluations/s
# vs the raw forward throughput; `lit-advgame predict` with DDP on every GPU and on one. It prints one table and
# writes it, with the logs, to --out (default runs/device_check). Other options are device_check.py's
# (--images, --steps, --size, --batch-size, --arch, --no-predict, --threads); --cpu is --device cpu.
#
# The repository's own code is used (PYTHONPATH), so nothing needs an editable install; "install" only adds
# the dependencies (pip install -e ".[test]") when one is missing. The exit status is 1 when a check failed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
INSTALL=1
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    --cpu) ARGS+=(--device cpu) ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exec "$PYTHON" "$ROOT/scripts/device_check.py" --help ;;
    *) ARGS+=("$arg") ;;
  esac
done
cd "$ROOT"
if [ "$INSTALL" = 1 ]; then
  if ! "$PYTHON" -c "import torch, torchvision, pytorch_lightning, jsonargparse, scipy, sklearn, matplotlib, tensorboard, pytest, yaml" 2>/dev/null; then
    "$PYTHON" -m pip install -e "$ROOT[test]"
  fi
  "$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}')"
fi
exec "$PYTHON" "$ROOT/scripts/device_check.py" "${ARGS[@]}"
