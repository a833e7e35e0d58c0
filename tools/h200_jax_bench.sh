#!/usr/bin/env bash
# The mpbench GPU check on a borrowed H200 with JAX and no TensorFlow (docs/backends.md).
#
#   tools/h200_jax_bench.sh prepare   here, with network: the wheels the H200 image lacks into .whl/
#   tools/h200_jax_bench.sh run       there, from the repository root: ResNet50 224 px, batch 256,
#                                     float32 / mixed_float16 / mixed_bfloat16 with jit, then
#                                     numerics/; everything lands in $OUT (under 8 minutes)
#
# The device call: run(command="bash tools/h200_jax_bench.sh run", carry=[".whl"], timeout_s=540).
# The image has Python 3.12, jax/jaxlib 0.11 (CUDA 13), numpy, ml-dtypes, pytest, pytest-benchmark,
# hypothesis, tabulate, nvidia-ml-py, matplotlib, rich, h5py, absl-py; it lacks keras, namex, optree.
set -uo pipefail

KERAS_WHEELS=("keras==3.15.1" "namex==0.1.0" "optree==0.20.0")
BENCH_SECONDS=${BENCH_SECONDS:-300}
NUMERICS_SECONDS=${NUMERICS_SECONDS:-150}

prepare() {
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${KERAS_WHEELS[@]}"
    ls -l .whl
}

run() {
    OUT=${OUT:-$PWD/h200-out}
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 2; }
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 KERAS_BACKEND=jax MPLBACKEND=Agg
    # Without preallocation JAX takes GPU memory as it needs it, so NVML's memory.used is the
    # run's, not 75% of the card; JAX's own peak_bytes_in_use is reported either way.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices()); print('keras', keras.__version__)"
    } 2>&1 | tee "$OUT/machine.txt"

    # NVML telemetry beside the benchmark (utilisation, power, memory, SM clock, temperature).
    nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,memory.used,clocks.sm,temperature.gpu \
        --format=csv -lms 500 >"$OUT/nvml.csv" 2>&1 &
    local sampler=$!

    timeout "$BENCH_SECONDS" python3 -m pytest benchmarks/test_train_step.py -p no:randomly \
        -p no:cacheprovider --mp-model resnet50 --mp-image-size 224 --mp-batch 256 \
        --mp-precision float32,mixed_float16,mixed_bfloat16 --mp-xla jit \
        --mp-steps 10 --mp-rounds 5 --mp-warmup-rounds 1 \
        --benchmark-json "$OUT/bench-jax-h200.json" 2>&1 | tee "$OUT/bench.log"
    kill "$sampler" 2>/dev/null

    timeout "$NUMERICS_SECONDS" python3 -m pytest numerics -p no:randomly -p no:cacheprovider -q -rs \
        2>&1 | tee "$OUT/numerics.log"

    if [ -s "$OUT/bench-jax-h200.json" ]; then
        python3 -m mpcore report "$OUT/bench-jax-h200.json" --out /tmp/h200-report 2>&1 |
            tee "$OUT/report.txt"
        python3 - "$OUT/bench-jax-h200.json" <<'EOF' 2>&1 | tee "$OUT/summary.txt"
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
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
