"""The GPU acceptance command: certify a GPU machine for mpbench in one go (docs/gpu.md).

    python tools/gpu_smoke.py [--out DIR] [--dry-run] [--allow-cpu]     (or: tox -e gpu-smoke)

Runs, one after the other, each writing into one folder (default ``gpu-smoke-<UTC time>``):

1. ``gpu-tests``: every test marked ``gpu`` (pytest ``-m gpu``), JUnit XML beside the log;
2. ``benchmarks``: the benchmark suite with short settings, its pytest-benchmark JSON;
3. ``doctor``: ``mpbench doctor --measure --json`` (measured TFLOP/s and ratios);
4. ``run``: a one-epoch ``mpbench run --profile seed --repeats 1`` (four ResNet50 workers, one
   per precision: XLA off, and no repeats or warm-up, which would make 13 workers, or 37 with
   every XLA mode; the benchmarks cover XLA);
5. ``maxbatch``: ``mpbench maxbatch resnet50 --json`` at 224 px, float32 and both half
   precisions: the largest batch until TensorFlow's real out-of-memory error, each trial in a
   fresh process (``maxbatch.json``; the bound of 1024 keeps it to about 12 trials each).

Each step's output goes to ``<step>.log`` (the doctor's JSON to ``doctor.json``);
``summary.json`` lists the commands, exit statuses and seconds. The exit status is 0 only when
every step succeeded. Without a GPU it refuses to start (exit 2) unless ``--allow-cpu`` (for
trying it out: the GPU tests are then all skipped).
``--dry-run`` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Short benchmark settings: the small model keeps fifteen XLA compilations within minutes on a
#: T4 while every precision x XLA code path (rewrite, loss scaling, sync, GPU memory) still runs.
BENCH_ARGS = (
    "--mp-model",
    "small",
    "--mp-image-size",
    "64",
    "--mp-batch",
    "64",
    "--mp-steps",
    "10",
    "--mp-rounds",
    "3",
    "--mp-warmup-rounds",
    "1",
)

#: The seed run, cut to one worker per precision (no XLA, no repeats, no warm-up).
SEED_RUN_ARGS = ("--profile", "seed", "--epochs", "1", "--xla", "off", "--repeats", "1")

#: The largest ResNet50 batch per precision on the real device memory (no budget).
MAXBATCH_ARGS = ("resnet50", "--max-batch", "1024", "--json")


def steps(out: Path, allow_cpu: bool = False) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of each step, in order; every file a step writes is under ``out``."""
    python = sys.executable
    pytest = [python, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
    bench = [*pytest, str(REPO / "benchmarks"), *BENCH_ARGS]
    bench += [f"--benchmark-json={out / 'benchmarks.json'}"]
    if allow_cpu:
        bench.append("--mp-allow-cpu")
    mpbench = [python, "-m", "mpcore"]
    junit, run = f"--junitxml={out / 'gpu-tests.xml'}", str(out / "run")
    return [
        (
            "gpu-tests",
            [*pytest, str(REPO / "tests"), str(REPO / "numerics"), "-m", "gpu", "-rs", junit],
        ),
        ("benchmarks", bench),
        ("doctor", [*mpbench, "doctor", "--measure", "--json"]),
        (
            "run",
            [*mpbench, "run", *SEED_RUN_ARGS, "--out", run],
        ),
        ("maxbatch", [*mpbench, "maxbatch", *MAXBATCH_ARGS]),
    ]


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for every result (default: timestamped)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--allow-cpu", action="store_true", help="run even without a GPU")
    args = parser.parse_args(argv)
    out = args.out or Path(time.strftime("gpu-smoke-%Y%m%dT%H%M%SZ", time.gmtime()))
    plan = steps(out.resolve(), args.allow_cpu)
    if args.dry_run:
        for name, command in plan:
            print(f"{name}: {' '.join(command)}")
        return 0
    if not args.allow_cpu and not has_gpu():
        print("gpu-smoke: no GPU visible to TensorFlow (--allow-cpu runs anyway)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    env.pop("MPBENCH_FAKE_GPU", None)  # certify the real machine, never a simulated one
    summary = []
    for name, command in plan:
        start = time.perf_counter()
        # The doctor's and maxbatch's stdout is a JSON document; every other step's goes to its log.
        json_steps = {"doctor": "doctor.json", "maxbatch": "maxbatch.json"}
        stdout_file = out / json_steps.get(name, f"{name}.log")
        with open(out / f"{name}.log", "a") as log, open(stdout_file, "a") as stdout:
            code = subprocess.run(command, stdout=stdout, stderr=log, env=env).returncode
        seconds = time.perf_counter() - start
        summary.append({"step": name, "command": command, "exit": code, "seconds": seconds})
        print(f"{name}: exit {code} in {seconds:.0f} s ({out / f'{name}.log'})", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(step["exit"] == 0 for step in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
