#!/usr/bin/env bash
# The mpbench GPU check on a borrowed H200 (or H100) with JAX and no TensorFlow (docs/gpu.md).
#
#   tools/h200_jax_bench.sh prepare   here, with network: the wheels the GPU image lacks into .whl/
#                                     (keras and its small pure-Python dependencies, mpbench itself)
#   tools/h200_jax_bench.sh plan      here: what `run` would do, each phase's time limit, the wheels
#                                     it would carry and their total size against the carry limit
#   tools/h200_jax_bench.sh run       there, from the repository root, everything into $OUT:
#                                     1. the step benchmark: ResNet50 224 px, batch 256, float32 /
#                                        mixed_float16 / mixed_bfloat16 under jit
#                                     2. pytest numerics/
#                                     3. the main job: mpbench run --profile seed (ResNet50, 224 px)
#                                        at batch 80 (the seed's) and at a larger batch, float32 vs
#                                        mixed_float16 vs mixed_bfloat16, jit
#
# The device call: run(command="bash tools/h200_jax_bench.sh run", carry=[".whl"], timeout_s=600).
# The image has Python 3.12, jax/jaxlib 0.11 (CUDA 13), numpy, ml-dtypes, pillow, matplotlib,
# tabulate, nvidia-ml-py, pytest, pytest-benchmark, hypothesis, rich, h5py, absl-py; it lacks
# keras, namex, optree and mpbench.
set -uo pipefail

WHEEL_DIR=${WHEEL_DIR:-.whl}
KERAS_WHEELS=("keras==3.15.1" "namex==0.1.0" "optree==0.20.0")
#: The device tool carries at most 64 MiB of working tree, the wheels included.
CARRY_LIMIT_BYTES=$((64 * 1024 * 1024))
#: One device command runs at most 600 s; the phases' limits must leave room for the setup.
COMMAND_SECONDS=600
SETUP_SECONDS=${SETUP_SECONDS:-30}
BENCH_SECONDS=${BENCH_SECONDS:-120}
NUMERICS_SECONDS=${NUMERICS_SECONDS:-70}
SEED_SECONDS=${SEED_SECONDS:-170}
LARGE_SECONDS=${LARGE_SECONDS:-170}
LARGE_BATCH=${LARGE_BATCH:-256}
#: Interleaved repeats of each main-job configuration: one is what fits 10 minutes with three
#: ResNet50 compilations per batch size; raise it (and the phase's limit) on a longer lease.
SEED_REPEATS=${SEED_REPEATS:-1}
SEED_EPOCHS=${SEED_EPOCHS:-3}
#: Generated ship images per class: 1280 images, 1024 for training (enough for the larger batch).
PER_CLASS=${PER_CLASS:-256}
PRECISIONS=float32,mixed_float16,mixed_bfloat16

bench_command() {
    echo "python3 -m pytest benchmarks/test_train_step.py -p no:randomly -p no:cacheprovider" \
        "--mp-model resnet50 --mp-image-size 224 --mp-batch 256 --mp-precision $PRECISIONS" \
        "--mp-xla jit --mp-steps 10 --mp-rounds 3 --mp-warmup-rounds 1" \
        "--benchmark-json \$OUT/bench-jax-h200.json"
}

numerics_command() {
    echo "python3 -m pytest numerics -p no:randomly -p no:cacheprovider -q -rs"
}

# $1: batch size, $2: output folder
seed_command() {
    echo "python3 -m mpcore run --profile seed --batch-size $1 --precision $PRECISIONS --xla jit" \
        "--epochs $SEED_EPOCHS --repeats $SEED_REPEATS --synthetic-per-class $PER_CLASS --out $2"
}

wheel_specs() {
    printf '%s\n' "${KERAS_WHEELS[@]}" "mpbench (built from this tree)"
}

prepare() {
    mkdir -p "$WHEEL_DIR"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEEL_DIR" \
        "${KERAS_WHEELS[@]}" || exit 1
    # mpbench itself, pure Python; installed there with --no-deps (it names TensorFlow).
    python3 -m pip wheel --no-deps -q -w "$WHEEL_DIR" . || exit 1
    plan
}

plan() {
    local total=$((SETUP_SECONDS + BENCH_SECONDS + NUMERICS_SECONDS + SEED_SECONDS + LARGE_SECONDS))
    echo "plan: one device command, KERAS_BACKEND=jax, results into \$OUT"
    echo "  setup     ${SETUP_SECONDS} s: pip install --no-index --no-deps --target /tmp/site $WHEEL_DIR/*.whl; nvidia-smi; NVML sampler"
    echo "  bench     ${BENCH_SECONDS} s: $(bench_command)"
    echo "  numerics  ${NUMERICS_SECONDS} s: $(numerics_command)"
    echo "  seed      ${SEED_SECONDS} s: $(seed_command 80 /tmp/runs/seed-b80)"
    echo "  large     ${LARGE_SECONDS} s: $(seed_command "$LARGE_BATCH" "/tmp/runs/seed-b$LARGE_BATCH")"
    echo "  files     machine.txt nvml.csv bench-jax-h200.json log.txt summary.txt runs.tar.gz"
    echo "time: ${total} s of the ${COMMAND_SECONDS} s a device command may run"
    local size=0 count=0 file bytes
    echo "wheels ($WHEEL_DIR):"
    if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
        for file in "$WHEEL_DIR"/*.whl; do
            bytes=$(stat -c %s "$file")
            size=$((size + bytes))
            count=$((count + 1))
            printf '  %-60s %10d bytes\n' "$(basename "$file")" "$bytes"
        done
    else
        wheel_specs | sed 's/^/  (not prepared) /'
    fi
    echo "carry: $count wheel(s), $size bytes of the $CARRY_LIMIT_BYTES-byte (64 MiB) limit"
    local problems=0
    if [ "$total" -gt "$COMMAND_SECONDS" ]; then
        echo "plan: error: the phases need ${total} s, more than ${COMMAND_SECONDS} s" >&2
        problems=1
    fi
    if [ "$size" -gt "$CARRY_LIMIT_BYTES" ]; then
        echo "plan: error: the wheels ($size bytes) exceed the carry limit" >&2
        problems=1
    fi
    if [ "$count" -eq 0 ]; then
        echo "plan: no wheels yet: run '$0 prepare' first (here, with network)"
    fi
    return $problems
}

run() {
    OUT=${OUT:-$PWD/h200-out}
    mkdir -p "$OUT" /tmp/runs
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEEL_DIR"/*.whl || { echo "wheel install failed"; exit 2; }
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KERAS_BACKEND=jax MPLBACKEND=Agg
    export MPBENCH_CACHE=/tmp/mpbench-cache
    # Without preallocation JAX takes GPU memory as it needs it, so NVML's memory.used is the
    # run's, not 75% of the card; JAX's own peak_bytes_in_use is reported either way.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    local log="$OUT/log.txt"
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        python3 -c "import jax, keras, mpcore; print('jax', jax.__version__, jax.devices()); print('keras', keras.__version__, 'mpcore from', mpcore.__file__)"
    } 2>&1 | tee "$OUT/machine.txt"

    # NVML telemetry beside everything (utilisation, power, memory, SM clock, temperature).
    nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,memory.used,clocks.sm,temperature.gpu \
        --format=csv -lms 500 >"$OUT/nvml.csv" 2>&1 &
    local sampler=$!

    echo "== bench" | tee -a "$log"
    eval "timeout $BENCH_SECONDS $(bench_command)" 2>&1 | tee -a "$log"
    echo "== numerics" | tee -a "$log"
    eval "timeout $NUMERICS_SECONDS $(numerics_command)" 2>&1 | tee -a "$log"
    # The main job: SIGTERM at the limit still writes the table, results.json and the plots of
    # what finished (exit 143); `--resume` would continue it.
    echo "== seed batch 80" | tee -a "$log"
    eval "timeout $SEED_SECONDS $(seed_command 80 /tmp/runs/seed-b80)" 2>&1 | tee -a "$log"
    echo "== seed batch $LARGE_BATCH" | tee -a "$log"
    eval "timeout $LARGE_SECONDS $(seed_command "$LARGE_BATCH" "/tmp/runs/seed-b$LARGE_BATCH")" 2>&1 |
        tee -a "$log"
    kill "$sampler" 2>/dev/null
    tar -czf "$OUT/runs.tar.gz" -C /tmp runs

    {
        if [ -s "$OUT/bench-jax-h200.json" ]; then
            python3 -m mpcore report "$OUT/bench-jax-h200.json" --out /tmp/h200-report
            python3 - "$OUT/bench-jax-h200.json" <<'EOF'
import json, sys
runs = {b["extra_info"]["precision"]: b["extra_info"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
for precision, info in runs.items():
    peak = info.get("peak_memory_bytes") or 0
    mfu = info.get("fraction_of_peak")
    print(f"{precision:15s} {info['images_per_second']:8.1f} images/s  {info['ms_per_step']:7.1f} ms/step  "
          f"MFU {100 * mfu if mfu is not None else float('nan'):5.1f}% of {info.get('peak_tflops')} TFLOP/s  "
          f"peak {peak / 2**30:6.2f} GiB (NVML {(info.get('nvml_peak_used_bytes') or 0) / 2**30:6.2f} GiB)  "
          f"compile {info['compile_seconds']:.0f} s")
if "float32" in runs and "mixed_bfloat16" in runs:
    ratio = runs["mixed_bfloat16"]["images_per_second"] / runs["float32"]["images_per_second"]
    print(f"bfloat16/float32 throughput: {ratio:.2f}x")
EOF
        fi
        for folder in /tmp/runs/seed-*; do
            [ -s "$folder/results.json" ] && python3 -m mpcore report "$folder/results.json" \
                --out "/tmp/report-$(basename "$folder")"
        done
    } 2>&1 | tee "$OUT/summary.txt"
}

case "${1:-}" in
prepare) prepare ;;
plan) plan ;;
run) run ;;
*)
    echo "usage: $0 prepare|plan|run" >&2
    exit 2
    ;;
esac
