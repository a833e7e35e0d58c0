"""Root pytest configuration: quiet TensorFlow, GPU detection once, global-state hygiene, the
``tensorflow_only`` skips on the JAX and torch Keras backends, and the device-agnostic suite's two
fixtures: ``@pytest.mark.cpu(reason=...)`` pins a test that states a CPU fact to the CPU, and
``no_tf32`` computes float32 references in true float32."""

from __future__ import annotations

import gc
import os
import signal
import sys

from mpcore.bench import onednn_setting

# Must be set before TensorFlow is imported anywhere: keep C++/absl log noise out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN stays off for the tests, on for a session of benchmarks/ only (as in a user's TensorFlow).
os.environ.setdefault(
    "TF_ENABLE_ONEDNN_OPTS",
    onednn_setting(
        sys.argv[1:], os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks")
    ),
)
# On a GPU host the test process and the mpbench processes it starts share the GPU: by default
# each TensorFlow process reserves nearly all its memory at the first op, starving the others.
# TensorFlow's own multi-process tests set this too (tensorflow/python/distribute/
# multi_process_lib.py); children inherit it.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
# A shell without job control starts a background command (`pytest ... &` in a script) with
# SIGINT ignored, and a process inherits that: Python then installs no KeyboardInterrupt
# handler, and every process the suite starts ignores Ctrl-C too. The tests of Ctrl-C (SIGINT
# to this process or to an `mpbench run`) then fail for the way pytest was started (a launcher
# test timed out after 60 s; a run finished instead of stopping). Python's own handler again,
# which pytest-xdist's workers and every child inherit as the default action.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest

from mpcore.probe import backend
from mpcore.probe.machine import visible_gpus

# Nothing here imports Keras (so TensorFlow) when this file is loaded: pytest-xdist's controller
# loads it too and runs no test, and TensorFlow's import there (4-5 s on a small CPU) came before
# any worker started. The fixtures import what they use; the workers' first test pays it once.

NO_GPU_REASON = "no GPU visible to TensorFlow"
#: Set to run the tests marked ``acceptance``: measured experiments of minutes each (two timing
#: paths agreeing on one comparison, a real memory-budget search), which a test session on a
#: laptop should not wait for. CI runs the agreement test in a session of its own (.ci/run);
#: the maxbatch search is run by hand (docs/testing.md).
ACCEPTANCE_ENV = "MPBENCH_ACCEPTANCE"


#: ``pytest -n auto`` starts at most this many workers: each imports TensorFlow (about 1 GiB and
#: 4-5 s of start-up), and the expensive groups below cannot be split further anyway.
MAX_AUTO_WORKERS = 4
#: What the controller tells each worker (``workerinput``): tests are scheduled by group.
LOADGROUP_INPUT = "mpbench_loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    """``pytest -n N`` distributes by group (``--dist loadgroup``) rather than test by test, so
    that the groups of :func:`group_by_shared_fixture` hold. Set here, not in ``addopts``: any
    ``--dist`` there makes pytest-benchmark disable every benchmark, even without ``-n``.

    A worker reads its own command line, where ``-n`` is all there is, and names each grouped
    test after its group only when it believes the mode is ``loadgroup``: without that name the
    controller sees no groups and spreads a scenario's readers over every worker, each running
    it. The controller tells it (:func:`pytest_configure_node`)."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "no") == "load":
        option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get(LOADGROUP_INPUT):
        option.loadgroup = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """In the controller, for each worker it starts: whether tests are scheduled by group."""
    node.workerinput[LOADGROUP_INPUT] = node.config.option.dist == "loadgroup"


def group_by_shared_fixture(items: list[pytest.Item]) -> None:
    """Under ``pytest -n N`` (pytest-xdist, grouped by :func:`pytest_configure`) keep the
    tests that share a module- or class-scoped fixture in one worker: such a fixture is often one
    expensive training (numerics/test_fp8_training.py, test_convergence_parity.py) that every
    worker running one of its tests would repeat. Tests without one are spread freely; a group set
    earlier (tests/conftest.py: the session scenarios) is kept."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope in ("module", "class", "package") for defs in definitions for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


# tryfirst: before pytest-xdist's worker names each grouped test after its group (it reads the
# marks this adds); tests/conftest.py's own tryfirst hook, registered later, runs before this one.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when TensorFlow sees no GPU, tests marked ``tensorflow_only``
    when the Keras backend is not TensorFlow (decided once, before any runs, from what this
    process can do) and tests marked ``acceptance`` unless asked for; group tests for
    pytest-xdist."""
    group_by_shared_fixture(items)
    if not os.environ.get(ACCEPTANCE_ENV):
        for item in items:
            marker = item.get_closest_marker("acceptance")
            if marker is not None:
                why = marker.kwargs.get("reason", "a measured experiment of minutes")
                item.add_marker(pytest.mark.skip(reason=f"{why}; {ACCEPTANCE_ENV}=1 runs it"))
    if not backend.is_tensorflow():
        only = pytest.mark.skip(
            reason=f"{backend.TENSORFLOW_ONLY} (the Keras backend is {backend.name()})"
        )
        for item in items:
            if "tensorflow_only" in item.keywords:
                item.add_marker(only)
    if visible_gpus():
        return
    skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After each test, collect its garbage once and move what survives into the permanent
    generation (``gc.freeze``).

    Why: ``keras.backend.clear_session()`` (run by every ``modes.applied()``, so by nearly every
    test that builds a model) calls a full ``gc.collect()``, which walks every object of the
    process: about 0.25 s with TensorFlow imported, several times a test. Frozen objects are not
    walked, so each collection costs what the running test allocated. What is frozen is never
    collected: only cyclic garbage made after this point and before the freeze can be lost, which
    is the garbage of an earlier test's module fixtures (a few models)."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def restore_tf_globals():
    """Restore the dtype policy, grappler options and JIT setting after every test."""
    from mpcore.precision.modes import GlobalState

    saved = GlobalState.capture()
    yield
    saved.restore()


@pytest.fixture(scope="session")
def ship_root(tmp_path_factory: pytest.TempPathFactory):
    """A small generated ship data set on disk (seed layout), shared by the session."""
    from mpcore.data.synthetic import write_synthetic_ships

    return write_synthetic_ships(tmp_path_factory.mktemp("ships"), per_class=24, image_size=64)


@pytest.fixture(autouse=True)
def pin_cpu_when_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test marked ``cpu`` states a CPU fact: every decision is made for no GPU
    (``MPBENCH_FAKE_GPU=none``), child processes see no GPU (``CUDA_VISIBLE_DEVICES=""``) and
    in-process work is placed on the CPU. Unmarked tests run wherever the backend places them."""
    if request.node.get_closest_marker("cpu") is None:
        yield
        return
    monkeypatch.setenv("MPBENCH_FAKE_GPU", "none")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # Placement decisions (how many GPUs a strategy may use) read visible_gpus() directly.
    for module in [m for name, m in sys.modules.items() if name.startswith("mpcore")]:
        if getattr(module, "visible_gpus", None) is visible_gpus:
            monkeypatch.setattr(module, "visible_gpus", lambda: ())
    import keras

    with keras.device("cpu:0"):  # tf.device on TensorFlow; the same on JAX and torch
        yield


@pytest.fixture
def no_tf32():
    """TF32 off for the test (float32 matmuls and convolutions in full float32 on Ampere and
    newer GPUs, where TensorFlow and JAX use TF32 by default), restored afterwards."""
    with backend.full_float32():
        yield
