"""The prepared GPU script's plan (tools/h200_jax_bench.sh plan), checked on the CPU: what it
would run, within one device command's 600 s, and the wheels it would carry, within 64 MiB.
(The script's `run` has not run on a GPU from here; `prepare` needs the network.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "h200_jax_bench.sh"
LIMIT = 64 * 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def plan(wheels: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), "plan"],
        cwd=REPO,
        env={**os.environ, "WHEEL_DIR": str(wheels), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_wheels(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir()
    for name, size in sizes.items():
        with open(folder / name, "wb") as handle:
            handle.truncate(size)
    return folder


def test_the_plan_runs_the_main_job_after_numerics_and_benchmarks(tmp_path: Path) -> None:
    wheels = fake_wheels(
        tmp_path / "whl",
        {"keras-3.15.1-py3-none-any.whl": 1_500_000, "mpbench-0.1.0-py3-none-any.whl": 200_000},
    )
    result = plan(wheels)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    phases = [line.split()[0] for line in lines if re.match(r"  \w+ +\d+ s:", line)]
    assert phases == ["setup", "bench", "numerics", "seed", "large"]
    seed = [line for line in lines if "mpcore run --profile seed" in line]
    assert len(seed) == 2
    assert "--batch-size 80 " in seed[0] and "--batch-size 256 " in seed[1]
    for line in seed:
        assert "--precision float32,mixed_float16,mixed_bfloat16" in line and "--xla jit" in line
    seconds = sum(int(s) for s in re.findall(r"^  \w+ +(\d+) s:", result.stdout, re.M))
    assert f"time: {seconds} s of the 600 s" in result.stdout and seconds <= 600
    assert re.search(r"keras-3\.15\.1-py3-none-any\.whl +1500000 bytes", result.stdout)
    assert f"carry: 2 wheel(s), 1700000 bytes of the {LIMIT}-byte (64 MiB) limit" in result.stdout


def test_the_plan_refuses_wheels_over_the_carry_limit(tmp_path: Path) -> None:
    wheels = fake_wheels(tmp_path / "whl", {"keras-3.15.1-py3-none-any.whl": LIMIT + 1})
    result = plan(wheels)
    assert result.returncode == 1
    assert "exceed the carry limit" in result.stderr


def test_the_plan_refuses_phases_longer_than_one_device_command(tmp_path: Path) -> None:
    result = plan(fake_wheels(tmp_path / "whl", {}), BENCH_SECONDS="400")
    assert result.returncode == 1
    assert "more than 600 s" in result.stderr


def test_an_unprepared_plan_names_the_wheels_it_would_build(tmp_path: Path) -> None:
    result = plan(tmp_path / "missing")
    assert result.returncode == 0
    assert "(not prepared) keras==3.15.1" in result.stdout
    assert "(not prepared) mpbench (built from this tree)" in result.stdout
    assert "prepare' first" in result.stdout
