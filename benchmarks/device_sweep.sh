#!/usr/bin/env bash
# Runs one `mmrec experiment` config on a GPU machine in many processes, within a deadline, and
# leaves its result store (and logs) where they can be copied back:
#
#   bash benchmarks/device_sweep.sh configs/experiments/beauty2014_candidates.yaml 15 540
#
# Arguments: the experiment config, the number of worker processes (default 15), and the
# seconds after which the workers are stopped (default 540; runs finished by then are kept,
# runs in flight are lost). The config must name `trainer.precision` itself where its runs
# must keep the keys of CPU runs (the GPU default is bf16-mixed). Also set here:
# - fp32 matrix products without TF32 (NVIDIA_TF32_OVERRIDE=0), so runs compute what the same
#   config computes on a CPU, to rounding;
# - CUDA MPS where the machine allows it (small models from many processes share the GPU);
# - a one-epoch smoke fit and test of the variant with the most options first, so a broken
#   GPU path fails in seconds.
# Packages the machine lacks may be carried in .whl/ (wheels, plus polars' runtime as
# .whl/polars_runtime.tar.xz); they are installed into /tmp/site. numba (+ llvmlite) may be
# left out: item dynamics then compute their features by the torch path (same values, slower). The raw files a prepared
# data folder was made from may travel as .whl/raw.tar.xz (paths from the checkout's parent). Output goes to $OUT (or
# /tmp/sweep_out): store.tgz (the result store, refreshed every 30 s), log.txt, gpu.txt.
# The table is then written where the store is, with `mmrec experiment --config ... --train
# false --out benchmarks/results/<name>` after unpacking store.tgz into runs/experiments/store.
set -u
cfg=${1:?experiment config}
jobs=${2:-15}
deadline=${3:-540}
begin=$(date +%s)
out=${OUT:-/tmp/sweep_out}
store=/tmp/sweep_store
mkdir -p "$out" "$store"
log=$out/log.txt
say() { echo "[sweep $(($(date +%s) - begin)) s] $*" | tee -a "$log"; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  if [ -f .whl/polars_runtime.tar.xz ]; then tar xJf .whl/polars_runtime.tar.xz -C /tmp/site || exit 1; fi
  # raw inputs the configs name as ../shared/data/... (the datamodule checks the prepared
  # folder against their contents)
  if [ -f .whl/raw.tar.xz ]; then tar xJf .whl/raw.tar.xz -C .. || exit 1; fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export WANDB_MODE=disabled NVIDIA_TF32_OVERRIDE=0 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
say "installed; $($py -c 'import torch, polars; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "polars", polars.__version__)' 2>&1)"
nvidia-smi >"$out/gpu.txt" 2>&1

if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 $py -c \
    "import torch; assert torch.ones(2, device='cuda').sum().item() == 2"; then
    say "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    say "MPS could not start; processes share the GPU by time slices"
  fi
else
  say "no MPS on this machine"
fi

# smoke: one short epoch of the variant with the most options, on the GPU
first=$($py - "$cfg" <<'EOF'
import sys
from pathlib import Path
from mmrec.experiments.experiment import config_from_args, plan
cfg, f = config_from_args(["--config", sys.argv[1]])
print(" ".join(max(plan(cfg, Path(f).parent), key=lambda r: len(r.args)).args))
EOF
) || { say "could not plan $cfg"; exit 1; }
smoke="--trainer.max_epochs=1 --trainer.limit_train_batches=5 --trainer.limit_val_batches=3"
smoke="$smoke --trainer.limit_test_batches=3 --trainer.logger=false --trainer.default_root_dir=/tmp/smoke"
# shellcheck disable=SC2086
timeout 300 $py -m mmrec.cli fit $first $smoke >>"$log" 2>&1 || { say "smoke fit failed"; exit 1; }
ckpt=$(find /tmp/smoke -name best.ckpt | head -1)
# shellcheck disable=SC2086
timeout 200 $py -m mmrec.cli test $first $smoke --ckpt_path="$ckpt" >>"$log" 2>&1 \
  || { say "smoke test failed"; exit 1; }
say "smoke fit and test passed"

( while sleep 30; do tar czf "$out/store.tgz.part" -C "$store" . && mv "$out/store.tgz.part" "$out/store.tgz"; done ) &
tarloop=$!
setsid $py -m mmrec.cli experiment --config "$cfg" --jobs "$jobs" --store "$store" \
  --root /tmp/sweep_runs --out "$out/report" --overrides+=trainer.logger=false >>"$log" 2>&1 &
exp=$!
while kill -0 "$exp" 2>/dev/null && [ $(($(date +%s) - begin)) -lt "$deadline" ]; do
  sleep 10
  [ $(( ($(date +%s) - begin) % 60 )) -lt 10 ] && nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader >>"$out/gpu.txt" 2>&1
done
if kill -0 "$exp" 2>/dev/null; then
  say "deadline: stopping the workers"
  kill -TERM -- "-$exp" 2>/dev/null
  sleep 5
  kill -KILL -- "-$exp" 2>/dev/null
fi
kill "$tarloop" 2>/dev/null
rm -rf "$store"/.claims-* 2>/dev/null
tar czf "$out/store.tgz" -C "$store" .
say "done: $(ls "$store"/*.json 2>/dev/null | wc -l) runs stored"
