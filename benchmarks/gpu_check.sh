#!/usr/bin/env bash
# One command for the first CUDA machine: everything that has so far only run on CPU, in at most 11 minutes.
#
#   bash benchmarks/gpu_check.sh
#
# Steps (each under `timeout`, capped by what is left of the 8-minute budget; a failing step does not stop
# the others):
#   1. install     only when the package's imports fail: pip install -e ".[test,triton]"
#                  (from the wheelhouse $SAGNN_WHEELHOUSE or ./.whl when present, offline)
#   2. kernels     tests/kernels with the Triton kernels COMPILED (TRITON_INTERPRET unset), incl. the
#                  backend="auto" self-check on the real GPU and the attention maps that
#                  `predict --attention` exports against the compiled kernel (4/8/16 heads)
#   3. attention   benchmarks/attention.py (Triton varlen vs padded SDPA vs loop), bfloat16
#   4. peers       benchmarks/peers.py --device cuda (a missing optional peer such as matgl is recorded in its
#                  CSV, not fatal)
#   5. train       benchmarks/train_speed.py: trainer-level crystals/s, warm-up and peak memory of SA-GNN eager,
#                  compiled (inductor) and CUDA-graphed (reduce-overhead on padded static shapes) against matgl's
#                  MEGNet and a PyG CGCNN, on phonons
#   6. ddp         1-epoch quickstart on 2 GPUs with DDP (skipped with fewer than 2 GPUs)
#
# Results: ${OUT:-gpu_check_results/<UTC date-time>} (relative paths are taken from the repository root):
# summary.txt (environment, one line per step: status, seconds, log; then the tail of every log), one log
# per step, attention_cuda.csv, peers_speed_cuda.csv, peers_size_scaling_cuda.csv, train_speed_cuda.csv.
# Exit status: 0 when every step that ran passed, 1 otherwise. Without CUDA it says so and exits 0 (no files).
#
# Environment: PYTHON (default python3, else python), SAGNN_DATA_ROOT (folder with matbench/*.csv.gz and
# matbench_phonons.json.gz; default ../shared/data beside the repository; without it the attention benchmark
# uses its synthetic size mix only and peers the bundled perovskite sample), SAGNN_WHEELHOUSE,
# GPU_CHECK_BUDGET_S (default 660).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-660}
DEADLINE=$((START + BUDGET - 10))  # 10 s for the summary

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif command -v python3 >/dev/null 2>&1; then PY=python3
else PY=python
fi

# ------------------------------------------------------------------------------------------------ CUDA?
SMI_GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
    SMI_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
TORCH_GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo "none")
if [[ "$SMI_GPUS" == 0 && ( "$TORCH_GPUS" == 0 || "$TORCH_GPUS" == none ) ]]; then
    echo "gpu_check: no CUDA device on this machine (nvidia-smi: no GPU; torch.cuda.is_available(): False" \
         "with $PY); nothing to check. Run benchmarks/gpu_check.sh on a CUDA machine."
    exit 0
fi

# ------------------------------------------------------------------------------------------------ results
RESULTS=${OUT:-gpu_check_results/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS" || exit 1
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY="$RESULTS/summary.txt"
STEPS=()   # "name<TAB>status<TAB>seconds<TAB>log"
FAILED=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sagnn-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
export SAGNN_CACHE_DIR="$WORK/graph_cache" WANDB_DIR="$WORK" MPLBACKEND=Agg
unset TRITON_INTERPRET  # compiled kernels (tests/conftest.py sets it only when CUDA is absent)

record() {  # name status seconds log
    STEPS+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4")
    printf 'gpu_check: %-10s %-28s %5ss  %s\n' "$1" "$2" "$3" "$4"
}

# run_step NAME MAX_SECONDS COMMAND...: runs under timeout (capped by the budget left), output in NAME.log
run_step() {
    local name=$1 max=$2; shift 2
    local log="$RESULTS/$name.log" left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        echo "skipped: the ${BUDGET}s budget is spent" >"$log"
        record "$name" "skipped (budget spent)" 0 "$log"; FAILED=1; return
    fi
    local limit=$((max < left ? max : left)) t0 rc
    t0=$(date +%s)
    echo "\$ $*   (timeout ${limit}s)" >"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if ((rc == 0)); then record "$name" ok "$took" "$log"
    elif ((rc == 124 || rc == 137)); then record "$name" "TIMEOUT after ${limit}s" "$took" "$log"; FAILED=1
    else record "$name" "FAILED (exit $rc)" "$took" "$log"; FAILED=1
    fi
}

skip_step() {  # name reason
    record "$1" "skipped: $2" 0 "-"
}

# ------------------------------------------------------------------------------------------------ 1. install
IMPORTS='import sagnn_lightning.cli, sagnn_lightning.data, sagnn_lightning.kernels.triton_attention, pytest'
if "$PY" -c "$IMPORTS" >/dev/null 2>&1; then
    skip_step install "imports already work"
else
    WHEELHOUSE=${SAGNN_WHEELHOUSE:-$ROOT/.whl}
    PIP=("$PY" -m pip install --no-build-isolation --retries 1 --timeout 15)
    if [[ -d "$WHEELHOUSE" ]]; then PIP+=(--no-index --find-links "$WHEELHOUSE"); fi
    run_step install 120 "${PIP[@]}" -e ".[test,triton]"
fi

# ------------------------------------------------------------------------------------------------ environment
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
{
    echo "sagnn_lightning gpu_check  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
        git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (+ local changes)"
    else
        COMMIT="unknown (no git)"
    fi
    echo "commit: $COMMIT"
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
    "$PY" - <<'EOF' 2>&1
import importlib.metadata
for name in ("torch", "triton", "pytorch-lightning", "torch_geometric", "pymatgen", "jsonargparse", "matgl"):
    try:
        print(f"{name}: {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name}: not installed")
try:
    import torch
    print(f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
          + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    from sagnn_lightning.kernels import triton_attention
    print("Triton kernels: " + ("INTERPRETED (TRITON_INTERPRET=1)" if triton_attention.interpreted() else "compiled"))
except Exception as err:  # noqa: BLE001
    print(f"torch/Triton check failed: {type(err).__name__}: {err}")
EOF
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
} >"$WORK/environment.txt"
cat "$WORK/environment.txt"
if [[ "$GPUS" == 0 ]]; then
    echo "gpu_check: nvidia-smi lists $SMI_GPUS GPU(s) but torch in $PY sees none (a CPU build of torch?):" \
         "install a CUDA build of torch, or point PYTHON at one" | tee -a "$WORK/environment.txt"
    FAILED=1
else
    # ------------------------------------------------------------------------------------------- 2. kernels
    run_step kernels 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/kernels

    # ------------------------------------------------------------------------------------------- 3. attention
    DATA_ROOT=${SAGNN_DATA_ROOT:-$ROOT/../shared/data}
    if [[ -f "$DATA_ROOT/matbench/matbench_phonons.csv.gz" && -f "$DATA_ROOT/matbench/matbench_jdft2d.csv.gz" \
          && -f "$DATA_ROOT/matbench/matbench_perovskites_fold0_train.csv.gz" ]]; then
        DISTRIBUTIONS=(matbench_perovskites matbench_jdft2d matbench_phonons mp_like_long_tail)
    else
        echo "gpu_check: no matbench atom counts under $DATA_ROOT/matbench: attention on the synthetic size mix only"
        DISTRIBUTIONS=(mp_like_long_tail)
    fi
    run_step attention 75 "$PY" benchmarks/attention.py --device cuda --data-root "$DATA_ROOT" \
        --distributions "${DISTRIBUTIONS[@]}" --batch-sizes 64 256 --csv "$RESULTS/attention_cuda.csv"

    # ------------------------------------------------------------------------------------------- 4. peers
    PEERS_DATA="$DATA_ROOT/matbench/matbench_phonons.json.gz"
    [[ -f "$PEERS_DATA" ]] || PEERS_DATA="$ROOT/sagnn_lightning/data/samples/mp_abx3_perovskites.csv.gz"
    run_step peers 110 "$PY" benchmarks/peers.py --device cuda --data "$PEERS_DATA" --num-batches 4 --rounds 3 \
        --threads 4 --out "$RESULTS" --no-plot

    # ------------------------------------------------------------------------------------------- 5. train
    TRAIN_DATA="$DATA_ROOT/matbench/matbench_phonons.csv.gz"
    TRAIN_TARGET="last phdos peak"
    if [[ ! -f "$TRAIN_DATA" ]]; then
        TRAIN_DATA="$ROOT/sagnn_lightning/data/samples/mp_abx3_perovskites.csv.gz"
        TRAIN_TARGET=band_gap
    fi
    run_step train 180 "$PY" benchmarks/train_speed.py --data "$TRAIN_DATA" --target "$TRAIN_TARGET" --device cuda \
        --warmup 10 --steps 40 --batch-size 64 --cache-dir "$WORK/train_cache" --out "$RESULTS/train_speed_cuda.csv"

    # ------------------------------------------------------------------------------------------- 6. ddp
    if ((GPUS >= 2)); then
        run_step ddp 130 "$PY" recipes/quickstart.py fit --config recipes/quickstart.yaml --trainer.devices=2 \
            --trainer.max_epochs=1 --trainer.accelerator=gpu --trainer.default_root_dir="$WORK/ddp_run"
    else
        skip_step ddp "needs 2 GPUs, found $GPUS"
    fi
fi

# ------------------------------------------------------------------------------------------------ summary
{
    cat "$WORK/environment.txt"
    echo
    printf '%-10s\t%-28s\t%s\t%s\n' step status seconds log
    for row in "${STEPS[@]}"; do
        IFS=$'\t' read -r name status seconds log <<<"$row"
        printf '%-10s\t%-28s\t%s\t%s\n' "$name" "$status" "$seconds" "${log#"$RESULTS"/}"
    done
    echo "total: $(($(date +%s) - START)) s of the ${BUDGET} s budget; overall: $([[ $FAILED == 0 ]] && echo PASS || echo FAIL)"
    grep -h "unavailable" "$RESULTS"/peers.log 2>/dev/null | sed 's/^/peers: /'
    for row in "${STEPS[@]}"; do
        IFS=$'\t' read -r name status seconds log <<<"$row"
        [[ -f "$log" ]] || continue
        echo
        echo "---- $name: last 25 lines of ${log#"$RESULTS"/}"
        tail -n 25 "$log"
    done
} >"$SUMMARY"
echo "gpu_check: results in $RESULTS (summary.txt); overall $([[ $FAILED == 0 ]] && echo PASS || echo FAIL)"
exit "$FAILED"
