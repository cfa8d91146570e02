#!/usr/bin/env bash
# The GPU path, proven in one command on a machine with an NVIDIA GPU (H100-class target:
# >= 5,000 samples/s for ViT-B-32 fp16 through the Spark embed stage, JPEG bytes to Delta):
#
#   bash benchmarks/gpu/check.sh            # 100,000 samples, CPU decode and GPU (nvJPEG) decode
#   N=20000 bash benchmarks/gpu/check.sh    # smaller
#   bash benchmarks/gpu/check.sh --cpu      # the CPU fallback (small n), runs anywhere
#
# Sets up .venv with scripts/setup.sh when it is missing (needs PyPI, Maven Central and
# crates.io once; LAION_SPARK_SKIP_BROWSER=1 skips Chromium, which this check does not use).
# On a machine that reaches no registry, bring the venv (or wheels) with the checkout.
# Prints one `result:` line per decode mode; takes a few minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  LAION_SPARK_SKIP_BROWSER=1 bash scripts/setup.sh
fi
PY=.venv/bin/python
if [ "${1:-}" != "--cpu" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
fi
exec "$PY" benchmarks/gpu/bench_gpu_embed.py --n "${N:-$([ "${1:-}" = "--cpu" ] && echo 128 || echo 100000)}" "$@"
