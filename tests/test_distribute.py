"""Mixed precision under tf.distribute: strategies, loss scaling across replicas, the local
multi-worker launcher, and scaling figures.

MirroredStrategy needs the CPU split into two logical devices before TensorFlow initialises its
devices, which this pytest process did long ago, so those runs happen in a fresh process
(tests/mirrored_probe.py) whose JSON report the tests read; the same process first runs the
training-step benchmark under the strategy (``--mp-cpu-replicas 2``). MultiWorkerMirroredStrategy
runs as two real worker processes started by the launcher under test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import keras
import pytest
from scenarios import SCRUBBED_ENV, XDIST_ENV

from mpcore.models.registry import build_model
from mpcore.names import STRATEGIES
from mpcore.precision.modes import RunConfig, applied
from mpcore.run.launcher import (
    LaunchOutcome,
    WorkerLaunchError,
    fork_server,
    launch_local_workers,
    local_tf_configs,
    run_local_multiworker,
)
from mpcore.run.process import WORKER_FAULT_ENV
from mpcore.run.scaling import images_per_second_per_replica, scaling_efficiency
from mpcore.run.spec import WorkerSpec
from mpcore.train.fit import RunResult, compile_for
from mpcore.train.replicas import ReplicaConsistentLossScaleOptimizer, StrategyError, make_strategy

PROBE = Path(__file__).with_name("mirrored_probe.py")


def assert_all_gone(pids: list[int]) -> None:
    """Every pid is gone: exited *and* reaped (a zombie would still answer signal 0)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive, f"stray worker processes: {alive}"


# --------------------------------------------------------------------------------------------
# Strategy names and TF_CONFIG


def test_unknown_strategy_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'ring'; valid: none, mirrored, multi"):
        make_strategy("ring")
    assert STRATEGIES == ("none", "mirrored", "multiworker")
    assert make_strategy("none") is None


def test_multiworker_without_tf_config_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match=r"needs TF_CONFIG .*--workers N"):
        make_strategy("multiworker")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "is not a cluster spec"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "is not a cluster spec"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
            r"task index 1 is outside 0\.\.0",
        ),
    ],
)
def test_invalid_tf_config_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(StrategyError, match=message):
        make_strategy("multiworker")


def test_local_tf_configs_share_one_cluster_on_free_ports() -> None:
    configs = local_tf_configs(3)
    workers = configs[0]["cluster"]["worker"]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == workers for c in configs)
    hosts, ports = zip(*(address.split(":") for address in workers), strict=True)
    assert set(hosts) == {"127.0.0.1"} and len(set(ports)) == 3
    for port in ports:  # free right now: each can be bound
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", int(port)))


# --------------------------------------------------------------------------------------------
# Results and scaling figures


def _result(**extra: object) -> RunResult:
    return RunResult(
        config={"precision": "float32", "xla": "off"},
        settings={"batch_size": 16},
        train_images=64,
        validation_images=16,
        steps_per_epoch=4,
        parameters=1,
        epoch_seconds=[2.0, 1.0],
        loss=[1.0, 0.5],
        accuracy=[0.5, 0.6],
        val_loss=[1.0, 0.9],
        val_accuracy=[0.5, 0.5],
        loss_scale=None,
        machine={},
        **extra,
    )


def test_results_default_to_one_replica_and_the_settings_batch() -> None:
    record = _result().to_dict()
    assert record["replicas"] == 1 and record["global_batch"] == 16


def test_scaling_figures() -> None:
    record = _result(replicas=4, global_batch=64).to_dict()
    assert record["images_per_second"] == 64.0
    assert images_per_second_per_replica(record) == 16.0
    # 4 replicas at 64 images/s against 20 images/s on one replica: 80% of linear scaling.
    assert scaling_efficiency(64.0, 4, 20.0) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="positive baseline"):
        scaling_efficiency(64.0, 4, 0.0)


def test_compile_uses_the_replica_consistent_loss_scale_only_when_distributed() -> None:
    config = RunConfig("mixed_float16", "off")
    with applied(config):
        plain = compile_for(build_model("small", 16), config, 1e-3)
        distributed = compile_for(build_model("small", 16), config, 1e-3, distributed=True)
    assert type(plain.optimizer) is keras.optimizers.LossScaleOptimizer
    assert type(distributed.optimizer) is ReplicaConsistentLossScaleOptimizer


# --------------------------------------------------------------------------------------------
# The launcher, with plain Python workers (no TensorFlow: fast)

#: A stand-in worker: records its pid and TF_CONFIG, then acts out its ROLE_<index> variable.
FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = sys.argv[1]
    tf_config = json.loads(os.environ["TF_CONFIG"])
    index = tf_config["task"]["index"]
    role = os.environ.get(f"ROLE_{index}", "ok")
    if role == "stubborn":  # first thing: the launcher's SIGTERM may come a second after start
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(out, f"seen-{index}.json"), "w") as handle:
        json.dump({"pid": os.getpid(), "tf_config": tf_config}, handle)
    if role == "ok" and index == 0:
        with open(os.path.join(out, "result.json"), "w") as handle:
            json.dump({"status": "ok", "workers": len(tf_config["cluster"]["worker"])}, handle)
    elif role == "fail":
        print("worker gave up: no data", file=sys.stderr)
        sys.exit(3)
    elif role == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif role == "fail_after_1":  # as a peer's next collective fails once worker 1 is gone
        while not os.path.exists(os.path.join(out, "seen-1.json")):
            time.sleep(0.01)
        sys.exit(3)
    elif role == "hang":
        time.sleep(120)
    elif role == "stubborn":
        time.sleep(120)
    """
)


def _fake_launch(tmp_path: Path, roles: dict[int, str], count: int = 2, **options) -> LaunchOutcome:
    env = {f"ROLE_{index}": role for index, role in roles.items()}
    return launch_local_workers(
        count,
        [sys.executable, "-c", FAKE_WORKER, str(tmp_path)],
        options.pop("timeout", 60.0),
        result_path=tmp_path / "result.json",
        log_dir=tmp_path / "logs",
        env=env,
        **options,
    )


def _seen_pids(tmp_path: Path, count: int) -> list[int]:
    return [json.loads((tmp_path / f"seen-{i}.json").read_text())["pid"] for i in range(count)]


def test_launcher_returns_the_chief_result_and_reaps_every_worker(tmp_path: Path) -> None:
    outcome = _fake_launch(tmp_path, {}, count=3)
    assert outcome.result == {"status": "ok", "workers": 3}
    seen = [json.loads((tmp_path / f"seen-{i}.json").read_text()) for i in range(3)]
    assert [s["tf_config"]["task"]["index"] for s in seen] == [0, 1, 2]
    assert sorted(s["pid"] for s in seen) == sorted(outcome.pids)
    assert_all_gone(outcome.pids)


def test_a_failing_worker_stops_the_others_with_a_clear_message(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerLaunchError) as caught:
        _fake_launch(tmp_path, {0: "hang", 1: "fail"})
    assert time.monotonic() - started < 30  # the hanging chief did not hold the launcher
    message = str(caught.value)
    assert "worker 1 of 2" in message and "exited with status 3" in message
    assert "worker gave up: no data" in message and "stopped the other worker(s)" in message
    assert sorted(caught.value.pids) == sorted(_seen_pids(tmp_path, 2))
    assert_all_gone(caught.value.pids)


def test_a_worker_killed_by_a_signal_is_named_before_a_peer_that_failed_after_it(
    tmp_path: Path,
) -> None:
    """Both found dead by the same poll (one poll a second here): worker 1's SIGKILL is the
    cause, worker 0's exit status 3 just after it (a peer's collective failing) the consequence."""
    with pytest.raises(WorkerLaunchError) as caught:
        _fake_launch(tmp_path, {0: "fail_after_1", 1: "sigkill"}, poll_seconds=1.0)
    message = str(caught.value)
    assert message.startswith("worker 1 of 2") and "was killed by SIGKILL" in message, message


def test_timeout_kills_workers_that_ignore_sigterm(tmp_path: Path) -> None:
    # A timeout of 1 s (a Python without TensorFlow starts in well under that, and the stubborn
    # worker ignores SIGTERM first thing) and a grace of 0.5 s: 1.5 s where 3 s and 1 s took 4.
    with pytest.raises(WorkerLaunchError, match=r"2-worker run timed out after 1 s") as caught:
        _fake_launch(tmp_path, {0: "stubborn", 1: "hang"}, timeout=1.0, stop_grace_seconds=0.5)
    # SIGTERM is ignored by worker 0, so it takes the grace period and then SIGKILL.
    assert 0.45 < caught.value.stop_seconds < 10
    assert_all_gone(caught.value.pids)


def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    def interrupt_when_started() -> None:
        # Like Ctrl-C in a terminal: SIGINT to the launcher, once both workers are running.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (tmp_path / "seen-1.json").exists() and (tmp_path / "seen-0.json").exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _fake_launch(tmp_path, {0: "hang", 1: "hang"})
    assert_all_gone(_seen_pids(tmp_path, 2))


def test_a_chief_without_a_result_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WorkerLaunchError, match=r"chief's result .* is unreadable"):
        _fake_launch(tmp_path, {0: "quiet"})


# --------------------------------------------------------------------------------------------
# MirroredStrategy over two logical CPUs (fresh process)


@pytest.fixture(scope="module")
def small_ships(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images (10 per class train, 2 validation): global batches of 16 split evenly."""
    from mpcore.data.synthetic import write_synthetic_ships

    return write_synthetic_ships(tmp_path_factory.mktemp("ships"), per_class=12, image_size=32)


@pytest.fixture(scope="module")
def mirrored(small_ships: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The probe's report, plus ``benchmark`` (pytest-benchmark's JSON of the mirrored
    training-step benchmark it ran first) and ``stdout`` (that session's report among it)."""
    folder = tmp_path_factory.mktemp("mirrored-probe")
    benchmark_json = folder / "bench.json"
    # Made before the function-scoped fixtures that drop these variables: a planted fault or a
    # cluster must not reach the probe, and pytest-xdist's variables would make the benchmark
    # session inside it disable its benchmarks.
    env = {k: v for k, v in os.environ.items() if k not in (*SCRUBBED_ENV, *XDIST_ENV)}
    completed = subprocess.run(
        [sys.executable, str(PROBE), str(small_ships), str(benchmark_json)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
        # The probe splits the CPU into two logical devices: no GPU in the child, and every
        # decision of the benchmark's plugin made for none.
        env={
            **env,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "",
            "MPBENCH_FAKE_GPU": "none",
        },
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    # No file when the benchmark session stopped early: its test says why, the others go on.
    benchmark = json.loads(benchmark_json.read_text()) if benchmark_json.exists() else {}
    return report | {"benchmark": benchmark, "stdout": completed.stdout}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(a)


@pytest.mark.slow
@pytest.mark.cpu(reason="MirroredStrategy over two logical CPUs (tests/mirrored_probe.py)")
def test_mirrored_trains_two_replicas_on_the_same_global_batch(mirrored: dict) -> None:
    assert mirrored["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in mirrored["devices"]] == ["device:CPU:0", "device:CPU:1"]
    for precision, runs in mirrored["runs"].items():
        single = runs["single"]
        assert single["replicas"] == 1 and single["global_batch"] == 16
        for name, run in runs.items():
            if name == "single":
                continue
            assert run["replicas"] == 2, (precision, name)
            assert run["global_batch"] == 16  # 8 per replica x 2
            assert run["steps_per_epoch"] == single["steps_per_epoch"] == math.ceil(50 / 16)
            assert all(math.isfinite(v) for v in run["loss"] + run["val_loss"])
            assert run["images_per_second"] > 0


@pytest.mark.slow
@pytest.mark.cpu(reason="MirroredStrategy over two logical CPUs (tests/mirrored_probe.py)")
def test_one_mirrored_epoch_matches_one_device(mirrored: dict) -> None:
    """One epoch on 2 replicas x 8 against one device x 16, same batches in the same order.

    With BatchNormalization synchronised across replicas the two runs compute the same
    function; only the order of floating-point sums differs. float32: the epoch loss agrees to
    1e-5 (measured ~1e-7) and the weight update to 1e-3 relative (measured ~1e-5; Adam divides
    by sqrt(v), which magnifies rounding in near-zero gradients). mixed_float16: float16
    rounding in a different order on half-size batches; loss to 1e-3 (measured ~1e-4), update
    cosine above 0.99 (measured 0.998).
    """
    exact = mirrored["runs"]["float32"]
    assert _relative(exact["single"]["loss"][0], exact["mirrored_sync_bn"]["loss"][0]) < 1e-5
    assert (
        _relative(exact["single"]["val_loss"][0], exact["mirrored_sync_bn"]["val_loss"][0]) < 1e-5
    )
    assert exact["mirrored_sync_bn"]["update_vs_single"]["relative_difference"] < 1e-3

    mixed = mirrored["runs"]["mixed_float16"]
    assert _relative(mixed["single"]["loss"][0], mixed["mirrored_sync_bn"]["loss"][0]) < 1e-3
    assert mixed["mirrored_sync_bn"]["update_vs_single"]["cosine"] > 0.99


@pytest.mark.slow
@pytest.mark.cpu(reason="MirroredStrategy over two logical CPUs (tests/mirrored_probe.py)")
def test_default_batch_norm_is_per_replica_and_stays_close(mirrored: dict) -> None:
    """Keras's BatchNormalization normalises each replica's 8 images by their own statistics
    (synchronized=False), so the default mirrored run is near, not equal to, one device: epoch
    loss within 2% (measured 0.1-0.3%), update cosine above 0.8 (measured 0.90-0.94)."""
    runs = mirrored["runs"]["float32"]
    assert _relative(runs["single"]["loss"][0], runs["mirrored"]["loss"][0]) < 0.02
    assert runs["mirrored"]["update_vs_single"]["cosine"] > 0.8
    assert runs["mirrored"]["update_vs_single"]["relative_difference"] > 1e-3  # not identical


@pytest.mark.slow
@pytest.mark.cpu(reason="MirroredStrategy over two logical CPUs (tests/mirrored_probe.py)")
def test_loss_scale_is_one_value_shared_by_the_replicas(mirrored: dict) -> None:
    """Only replica 1's gradients overflow: every replica skips the step and the one mirrored
    loss scale halves once (Keras's own LossScaleOptimizer checks only replica 0 here and
    writes inf/NaN into the weights)."""
    assert mirrored["runs"]["mixed_float16"]["mirrored_sync_bn"]["loss_scale"] == [2.0**15]
    overflow = mirrored["overflow_on_replica_1"]
    assert overflow["scale_is_mirrored"]
    assert overflow["scale_copies"] == [2.0**14, 2.0**14]
    assert overflow["weights_finite"] and overflow["weights_unchanged"]


@pytest.mark.slow
@pytest.mark.cpu(reason="MirroredStrategy over two logical CPUs (tests/mirrored_probe.py)")
def test_xla_mode_is_verified_under_a_strategy(mirrored: dict) -> None:
    assert mirrored["xla"]["jit_compile"] == {"off": False, "jit": True}
    # jit_compile="auto" resolves to off under tf.distribute (and on a CPU): check_model says so.
    assert "model.jit_compile is False, expected True" in mirrored["xla"]["auto_rejected"]


@pytest.mark.slow
@pytest.mark.cpu(reason="--mp-cpu-replicas splits the CPU into logical devices")
def test_benchmark_mirrored_over_two_cpus_records_replicas(mirrored: dict) -> None:
    """The training-step benchmark the probe ran first, with --mp-strategy mirrored and
    --mp-cpu-replicas 2 (tests/mirrored_probe.py, BENCHMARK_OPTIONS: mixed_float16, batch 4)."""
    assert mirrored["benchmark_status"] == 0, mirrored["stdout"][-3000:]
    (benchmark,) = mirrored["benchmark"].get("benchmarks", [])
    info = benchmark["extra_info"]
    assert (info["strategy"], info["replicas"], info["batch"], info["global_batch"]) == (
        "mirrored",
        2,
        4,
        8,
    )
    assert info["images_per_second"] == pytest.approx(2 * info["images_per_second_per_replica"])
    assert info["final_loss_scale"] > 0  # the LossScaleOptimizer ran under the strategy
    assert "small 16px batch 4 on CPU, mirrored x2" in mirrored["stdout"]


# --------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy with two local worker processes

SPEC_SETTINGS = {"model": "small", "image_size": 16, "batch_size": 8, "epochs": 1}


# Two workers in sync, the chief recording: tests/test_cli_distribute.py, on the session's
# two-worker run. Here, the process boundary: a killed worker stops the run.


@pytest.mark.slow
def test_killing_a_worker_stops_the_run_quickly_and_leaves_no_process(
    small_ships: Path, tmp_path: Path
) -> None:
    spec = WorkerSpec(
        config={"precision": "float32", "xla": "off"},
        settings=SPEC_SETTINGS,
        data_root=str(small_ships),
        result_path="",
    )
    started = time.monotonic()
    # Inside a run's fork server, as ``mpbench run`` starts them: both workers forked, each in
    # a session of its own (a kept fork server of the session's pool serves them if it fits).
    with pytest.raises(WorkerLaunchError) as caught, fork_server():
        # Worker 1 SIGKILLs itself after its first step, while worker 0 waits for it in the
        # next all-reduce, which on its own would wait forever.
        run_local_multiworker(
            spec, 2, timeout=300, workdir=tmp_path, env={WORKER_FAULT_ENV: "1=crash"}
        )
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "worker 1 of 2" in message and "was killed by SIGKILL" in message, message
    assert "stopped the other worker(s)" in message, message
    # Worker 0, blocked in the all-reduce, ends at the launcher's SIGTERM, not at the SIGKILL
    # that follows the 5 s grace (TensorFlow's coordination service catches SIGTERM; the worker
    # puts the default action back, mpcore/run/worker.py): 5.1 s before that fix, 0.2 s after.
    assert caught.value.stop_seconds < 2.5, caught.value.stop_seconds
    assert elapsed < 200, elapsed  # far below the timeout: the death was noticed, not waited out
    assert not (tmp_path / "result.json").exists()
    assert_all_gone(caught.value.pids)
