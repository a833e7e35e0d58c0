"""Reliability: bad input is one line and exit 2 with nothing lost, training faults are
named, a killed run keeps its last complete state, ``--resume`` continues it, and every result
records what it needs to be reproduced.

The bad-input matrix runs ``mpbench run`` in-process, resuming a saved run, so every case also
proves that the saved run is left byte for byte as it was. Subprocesses are used only where a
real process matters: stderr without a traceback, SIGKILL, the workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from processes import alive, children
from scenarios import run_main

from mpcore.data.ships import (
    DataError,
    csv_path,
    find_bad_images,
    images_dir,
    read_ship_index,
    stratified_split,
)
from mpcore.run.files import write_json_atomic
from mpcore.run.process import FAULT_ENV
from mpcore.run.schema import RESULTS_FILE, SCHEMA

PER_CLASS = 8  # 40 images: 30 training, 10 validation
# --profile explicit: the default profile depends on the machine.
TINY = (
    "--profile",
    "quick",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--repeats",
    "1",
)


@pytest.fixture
def ships(tiny_ships: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_ships, tmp_path / "ships"))


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    """An output folder holding an earlier run, which no bad input may touch."""
    out = tmp_path / "earlier-run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "float32+xla_off.log").write_text("earlier log\n")
    write_json_atomic(
        out / RESULTS_FILE,
        {
            "schema": SCHEMA,
            "status": "complete",
            "settings": {"model": "small", "epochs": 1},
            "data": {"root": "/elsewhere"},
            "configurations": [{"name": "float32+xla_off", "status": "ok"}],
        },
    )
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mpbench run: error: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Bad input: data


def _edit_rows(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        lines = csv_path(root).read_text().splitlines()
        csv_path(root).write_text("\n".join([lines[0], *edit(lines[1:])]) + "\n")

    return damage


def _corrupt_images(root: Path) -> None:
    folder = images_dir(root)
    whole = (folder / "000001.jpg").read_bytes()
    (folder / "000001.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "000002.jpg").write_text("image,category\n")
    Image.open(folder / "000004.jpg").save(folder / "000004.jpg", format="TIFF")


def _one_carrier(rows: list[str]) -> list[str]:
    carriers = [row for row in rows if row.endswith(",3")]
    return [row for row in rows if not row.endswith(",3")] + carriers[:1]


#: One case per kind of data error through the command line (one line, exit 2, the saved run
#: kept); every train.csv message itself is tests/test_data.py's (read_ship_index).
DATA_CASES = {
    "csv missing": (lambda root: csv_path(root).unlink(), ["train.csv: file not found"]),
    "a bad row, named by its line": (
        _edit_rows(lambda rows: [rows[0], "000001.jpg,6", *rows[2:]]),
        ["train.csv:3: category 6 is outside 1..5"],
    ),
    "corrupt, non-image and unsupported images, all named": (
        _corrupt_images,
        [
            "3 unreadable images: 000001.jpg (",
            "; 000002.jpg (not an image); 000004.jpg (unsupported format TIFF); "
            "fix or remove them, or pass --skip-bad-images",
        ],
    ),
    "class too small to stratify": (
        _edit_rows(_one_carrier),
        ["class 3 (Carrier) has 1 image; at least 2 are needed to stratify"],
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_is_one_line_and_keeps_the_saved_run(
    case: str, ships: Path, saved_run: Path, invoke
) -> None:
    damage, expected = DATA_CASES[case]
    damage(ships)
    before = snapshot(saved_run)
    argv = ["run", "--data", str(ships), *TINY, "--out", str(saved_run), "--resume"]
    code, _, err = invoke(argv)
    assert_one_line_error(code, err, *expected)
    assert snapshot(saved_run) == before


def test_missing_data_folder_is_named(tmp_path: Path, saved_run: Path, invoke) -> None:
    before = snapshot(saved_run)
    missing = tmp_path / "nowhere"
    argv = ["run", "--data", str(missing), *TINY, "--out", str(saved_run), "--resume"]
    code, _, err = invoke(argv)
    assert_one_line_error(code, err, f"data folder not found: {missing}")
    assert snapshot(saved_run) == before


def test_bom_whitespace_grayscale_rgba_and_png_in_jpg_are_accepted(ships: Path) -> None:
    """The library side of what the end-to-end run below trains on: read and decodable."""
    convert_accepted_variants(ships)
    index = read_ship_index(ships)
    assert index.class_counts() == [PER_CLASS] * 5
    assert find_bad_images(index) == []


def convert_accepted_variants(root: Path) -> None:
    """A BOM and stray whitespace in train.csv; grayscale, RGBA and PNG-in-.jpg images."""
    table = csv_path(root)
    rows = table.read_text().splitlines()
    spaced = [" , ".join(f" {cell} " for cell in row.split(",")) + "  " for row in rows]
    table.write_text("\n".join(spaced) + "\n", encoding="utf-8-sig")
    folder = images_dir(root)
    Image.open(folder / "000005.jpg").convert("L").save(folder / "000005.jpg", format="JPEG")
    Image.open(folder / "000006.jpg").convert("RGBA").save(folder / "000006.jpg", format="PNG")
    Image.open(folder / "000007.jpg").save(folder / "000007.jpg", format="PNG")


# --------------------------------------------------------------------------------------------
# Bad input: options, weights, output folder


def _other_architecture_weights(folder: Path) -> Path:
    import keras

    path = folder / "dense.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(path)
    return path


def _garbage_weights(folder: Path) -> Path:
    path = folder / "garbage.weights.h5"
    path.write_bytes(b"not an HDF5 file\n" * 8)
    return path


OPTION_CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "unknown precision": (
        lambda _: ["--precision", "float64"],
        [
            "unknown --precision value 'float64'; "
            "valid: float32, mixed_float16, mixed_bfloat16, amp_rewrite, float8, all"
        ],
    ),
    "unknown xla": (
        lambda _: ["--xla", "fast"],
        ["unknown --xla value 'fast'; valid: off, jit, auto, all"],
    ),
    "unknown model": (
        lambda _: ["--model", "vgg"],
        ["--model: unknown model 'vgg'; valid: resnet50, small"],
    ),
    "unknown profile": (lambda _: ["--profile", "huge"], ["invalid choice: 'huge'", "quick"]),
    "zero epochs": (lambda _: ["--epochs", "0"], ["--epochs", "must be a positive integer, got 0"]),
    "negative batch size": (
        lambda _: ["--batch-size", "-8"],
        ["--batch-size", "must be a positive integer, got -8"],
    ),
    "zero image size": (
        lambda _: ["--image-size", "0"],
        ["--image-size", "must be a positive integer, got 0"],
    ),
    "non-integer epochs": (lambda _: ["--epochs", "two"], ["--epochs", "'two' is not an integer"]),
    "batch larger than the training split": (
        lambda _: ["--batch-size", "31"],
        ["--batch-size 31 is larger than the training split (30 images of 40)"],
    ),
    "image size too small for the model": (
        lambda _: ["--image-size", "7"],
        ["--image-size 7 is too small for model small (minimum 8)"],
    ),
    "weights file missing": (
        lambda folder: ["--weights", str(folder / "absent.weights.h5")],
        ["--weights: file not found: ", "absent.weights.h5"],
    ),
    "weights file unreadable as weights": (
        lambda folder: ["--weights", str(_garbage_weights(folder))],
        ["--weights: ", "garbage.weights.h5 is not a Keras weights file"],
    ),
    "weights of another architecture": (
        lambda folder: ["--weights", str(_other_architecture_weights(folder))],
        ["--weights: cannot load weights ", "dense.weights.h5 into small"],
    ),
}


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # other weights
@pytest.mark.parametrize("case", OPTION_CASES)
def test_bad_option_is_one_line_and_keeps_the_saved_run(
    case: str, tiny_ships: Path, saved_run: Path, tmp_path: Path, invoke
) -> None:
    extra, expected = OPTION_CASES[case]
    before = snapshot(saved_run)
    argv = ["run", "--data", str(tiny_ships), *TINY, "--out", str(saved_run), "--resume"]
    code, _, err = invoke([*argv, *extra(tmp_path)])
    if case.startswith("unknown profile"):  # argparse's own wording, prefixed by the command
        assert err.startswith("mpbench run: error: argument --profile: ")
    assert_one_line_error(code, err, *expected)
    assert snapshot(saved_run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes files whatever their mode")
def test_unreadable_weights_and_unwritable_out_by_permissions(
    tiny_ships: Path, tmp_path: Path, invoke
) -> None:
    weights = _garbage_weights(tmp_path)
    weights.chmod(0)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    base = ["run", "--data", str(tiny_ships), *TINY]
    code, _, err = invoke([*base, "--weights", str(weights), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, err, f"--weights: file not readable: {weights}")
    code, _, err = invoke([*base, "--out", str(locked / "out")])
    assert_one_line_error(code, err, f"--out {locked / 'out'} is not a writable folder")


def test_out_holding_a_run_is_refused_without_resume(
    tiny_ships: Path, saved_run: Path, invoke
) -> None:
    before = snapshot(saved_run)
    code, _, err = invoke(["run", "--data", str(tiny_ships), *TINY, "--out", str(saved_run)])
    assert_one_line_error(
        code,
        err,
        f"--out {saved_run} already holds a run (results.json); "
        "pass --resume to continue it or choose a new folder",
    )
    assert snapshot(saved_run) == before


@pytest.mark.parametrize("case", ["under a file", "is a file", "half-written results"])
def test_unusable_out_is_one_line(case: str, tiny_ships: Path, tmp_path: Path, invoke) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    resume: list[str] = []
    if case == "under a file":
        out, expected = blocker / "out", f"--out {blocker / 'out'} is not a writable folder: "
    elif case == "is a file":
        out, expected = blocker, f"--out {blocker} exists and is not a folder"
    else:  # what a writer without the temporary-file-and-rename step could leave behind
        out, resume = tmp_path / "torn", ["--resume"]
        out.mkdir()
        (out / RESULTS_FILE).write_text('{"schema": "mpbench-results/1", "configur')
        expected = f"{out / RESULTS_FILE} is not valid JSON"
    before = snapshot(tmp_path)
    argv = ["run", "--data", str(tiny_ships), *TINY, "--out", str(out), *resume]
    code, _, err = invoke(argv)
    assert_one_line_error(code, err, expected)
    assert snapshot(tmp_path) == before


def test_library_api_rejects_bad_settings_with_the_value_named(tmp_path: Path) -> None:
    from mpcore.models.registry import WeightsError, build_model
    from mpcore.precision.modes import RunConfig, applied
    from mpcore.train.settings import TrainSettings

    for field in ("epochs", "batch_size", "image_size"):
        with pytest.raises(ValueError, match=f"{field.replace('_', ' ')} must be positive, got 0"):
            TrainSettings(**{field: 0})
    with pytest.raises(ValueError, match="image size must be positive, got -1"):
        TrainSettings(image_size=-1)
    with pytest.raises(ValueError, match="unknown model 'vgg'; valid: resnet50, small"):
        TrainSettings(model="vgg")
    with applied(RunConfig("float32", "off")), pytest.raises(WeightsError, match="into small"):
        build_model("small", 16, weights=_other_architecture_weights(tmp_path))


# --------------------------------------------------------------------------------------------
# Fuzz: no train.csv makes the reader fail other than with a documented DataError

FUZZ_IMAGES = ("000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg")
#: Replaced by the fuzz folder's absolute images/ path: an absolute name of an existing image.
FUZZ_ROOT_MARK = "@IMAGES@"
cells = st.one_of(
    st.sampled_from(FUZZ_IMAGES),
    st.sampled_from(("image", "category", " Image ", "label", "absent.jpg", "../train.csv")),
    # Names for the same file, or for files outside images/.
    st.sampled_from(
        ("./000000.jpg", "sub/../000001.jpg", "../images/000002.jpg", "/etc/hostname", "..", ".")
    ),
    st.sampled_from(FUZZ_IMAGES).map(lambda name: f"{FUZZ_ROOT_MARK}/{name}"),
    st.sampled_from(("1", "5", " 3 ", "0", "6", "-1", "2.0", "x", "", '"4"', "１")),
    st.text(max_size=8),
)
rows = st.lists(cells, min_size=0, max_size=4).map(",".join)
csv_texts = st.one_of(
    st.lists(rows, max_size=8).map("\n".join),
    st.tuples(st.sampled_from(("image,category", "category,image", "\ufeffimage,category")), rows)
    .flatmap(lambda head: st.lists(rows, max_size=8).map(lambda body: [head[0], *body]))
    .map("\r\n".join),
    st.text(max_size=80),
)


@pytest.fixture(scope="module")
def fuzz_root(tiny_ships: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(tiny_ships, tmp_path_factory.mktemp("fuzz") / "ships"))


@pytest.mark.slow
@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=csv_texts, encoding=st.sampled_from(("utf-8", "utf-8-sig", "latin-1", "utf-16")))
def test_fuzzed_train_csv_loads_cleanly_or_raises_a_documented_error(
    fuzz_root: Path, text: str, encoding: str
) -> None:
    table = csv_path(fuzz_root)
    text = text.replace(FUZZ_ROOT_MARK, str(images_dir(fuzz_root)))
    table.write_bytes(text.encode(encoding, errors="replace"))
    try:
        index = read_ship_index(fuzz_root)
        train, validation = stratified_split(index, 0.2, seed=0)
    except DataError as error:
        message = str(error)
        assert "\n" not in message
        assert message.startswith((str(table), "class ")), message
        return
    assert len(index) == len(set(index.paths)) > 0
    assert all(Path(path).is_file() for path in index.paths)
    # No two names for one file, nothing outside images/.
    resolved = [Path(path).resolve() for path in index.paths]
    assert len(set(resolved)) == len(resolved)
    assert all(images_dir(fuzz_root).resolve() in path.parents for path in resolved)
    assert set(index.labels) <= set(range(5))
    assert sorted(train.paths + validation.paths) == sorted(index.paths)


# --------------------------------------------------------------------------------------------
# Training faults: the loss guard's message


def _guard_message(precision: str, loss: float, scale: float | None = None) -> str:
    import keras

    from mpcore.precision.modes import RunConfig, applied
    from mpcore.run.callbacks import NonFiniteLossError, make_loss_guard
    from mpcore.train.fit import build_compiled
    from mpcore.train.settings import TrainSettings

    config = RunConfig(precision, "off")
    with applied(config):
        model = build_compiled(config, TrainSettings(model="small", image_size=8))
        model.optimizer.build(model.trainable_variables)
        if scale is not None:
            model.optimizer.dynamic_scale.assign(scale)
        guard = make_loss_guard(config.name)
        guard.set_model(model)
        guard.on_epoch_begin(0)
        guard.on_train_batch_end(5, {"loss": 0.7})  # finite: no complaint
        with pytest.raises(NonFiniteLossError) as caught:
            guard.on_train_batch_end(6, {"loss": keras.ops.convert_to_tensor(loss)})
    return str(caught.value)


@pytest.mark.parametrize(
    ("precision", "loss", "scale", "expected"),
    [
        ("float32", float("inf"), None, "float32+xla_off: loss is inf at epoch 1, step 7"),
        (
            "mixed_float16",
            float("nan"),
            None,
            "mixed_float16+xla_off: loss is nan at epoch 1, step 7, loss scale 32768",
        ),
        (  # a collapsed loss scale is named as such
            "mixed_float16",
            float("nan"),
            1.0,
            "mixed_float16+xla_off: loss is nan at epoch 1, step 7, loss scale 1 (collapsed)",
        ),
    ],
)
def test_the_loss_guard_names_configuration_epoch_step_and_scale(
    precision: str, loss: float, scale: float | None, expected: str
) -> None:
    assert _guard_message(precision, loss, scale) == expected


# --------------------------------------------------------------------------------------------
# Reproducibility where bitwise identity is not promised


@pytest.mark.slow
def test_runs_without_op_determinism_repeat_within_a_tolerance(tiny_ships: Path) -> None:
    """Without op determinism (the default on a GPU, and what ``xla_jit`` gets: Keras drops
    ``jit_compile`` under it) two runs are only promised to agree within a tolerance; the CPU
    default is bitwise (tests/test_training.py). XLA's compile is too slow for this budget."""
    from mpcore.precision.modes import RunConfig
    from mpcore.train.fit import train
    from mpcore.train.settings import TrainSettings

    train_index, validation_index = stratified_split(read_ship_index(tiny_ships), 0.2, seed=3)
    settings = TrainSettings(
        model="small", image_size=16, batch_size=8, epochs=2, seed=3, deterministic=False
    )
    first, second = (
        train(RunConfig("float32", "off"), settings, train_index, validation_index)
        for _ in range(2)
    )
    assert first.settings["deterministic"] is False
    assert second.loss == pytest.approx(first.loss, rel=1e-3)
    assert second.val_loss == pytest.approx(first.val_loss, rel=1e-3)


# --------------------------------------------------------------------------------------------
# End to end: corrupt images skipped, SIGKILL mid-configuration, --resume, a real NaN loss


@pytest.mark.slow
def test_real_process_bad_input_has_no_traceback(
    ships: Path, tmp_path: Path, mpbench_process
) -> None:
    _corrupt_images(ships)
    completed = mpbench_process("run", "--data", str(ships), *TINY, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        completed.stderr.strip()
    ] and completed.stderr.startswith("mpbench run: error: 3 unreadable images: 000001.jpg (")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_killed_run_keeps_its_state_and_resume_continues_it(
    ships: Path, tmp_path: Path, invoke, cli_env
) -> None:
    convert_accepted_variants(ships)
    folder = images_dir(ships)
    whole = (folder / "000001.jpg").read_bytes()
    (folder / "000001.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "000002.jpg").write_text("not a picture")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "mpcore", "run", "--data", str(ships), *TINY, "--seed", "3"]
    argv += ["--precision", "float32", "mixed_float16", "--out", str(out), "--skip-bad-images"]
    results = out / RESULTS_FILE

    # 1. SIGKILL the run while the second configuration's worker is running.
    process = subprocess.Popen(
        argv, env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (results.is_file() and json.loads(results.read_text())["configurations"]):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no configuration finished within 240 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let the parent start the next worker
        workers = children(process.pid)
        process.send_signal(signal.SIGKILL)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "data: leaving out 2 unreadable images: 000001.jpg (" in stdout
    assert "[2/2] mixed_float16+xla_off: training" in stdout
    assert workers, "no worker was running when the run was killed"
    deadline = time.monotonic() + 30  # orphaned workers notice the dead parent and stop
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker kept running after its parent was killed"
        time.sleep(0.2)
    killed = json.loads(results.read_text())
    assert killed["status"] == "running"
    assert [(r["name"], r["status"]) for r in killed["configurations"]] == [
        ("float32+xla_off", "ok")
    ]
    assert not list(out.glob(f".{RESULTS_FILE}.*")), "a temporary file was left behind"
    skipped = [Path(image["path"]).name for image in killed["data"]["skipped_images"]]
    assert skipped == ["000001.jpg", "000002.jpg"]
    assert killed["data"]["images"] == 38

    # 2. Resume: float32 is kept as it was; mixed_float16 meets a real NaN loss. In this process
    # (the process boundary was the kill above); its worker's output is kept with the run's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPBENCH_CACHE", str(tmp_path))
        patch.setenv(FAULT_ENV, "mixed_float16+xla_off=nan")
        code, resumed_out, resumed_err = run_main([*argv[3:], "--resume"], tmp_path / "resumed")
    assert code == 1, resumed_err  # one configuration failed
    assert "Traceback" not in resumed_err
    assert "resuming: 1 configuration(s) already finished: float32+xla_off" in resumed_out
    assert "[float32+xla_off] Epoch" not in resumed_out  # not trained again
    document = json.loads(results.read_text())
    assert document["status"] == "complete"
    records = {r["name"]: r for r in document["configurations"]}
    assert records["float32+xla_off"] == killed["configurations"][0]
    nan = records["mixed_float16+xla_off"]
    assert nan["status"] == "failed" and nan["result"] is None
    assert nan["reason"].startswith(
        "non-finite loss: mixed_float16+xla_off: loss is nan at epoch 1, step 2, loss scale "
    )
    assert float(nan["reason"].rsplit(" ", 1)[1]) > 1  # a live scale: not named collapsed
    assert "FAILED after " in resumed_out and nan["reason"] in resumed_out

    # 3. Every result records the seed, the full configuration, the versions and the machine.
    result = records["float32+xla_off"]["result"]
    assert result["config"] == {"precision": "float32", "xla": "off"}
    assert result["settings"] == document["settings"]
    assert result["settings"]["seed"] == 3
    # The determinism default the machine's capability implies (on: a CPU; off: a GPU, real or
    # simulated): the child sees the same devices and MPBENCH_FAKE_GPU as this process.
    from mpcore.probe.capability import capability

    assert result["settings"]["deterministic"] is capability().deterministic_default
    for versions in (result["machine"]["versions"], document["machine"]["versions"]):
        assert versions["tensorflow"] and versions["keras"]
    assert result["machine"]["cpu_count"] == os.cpu_count()
    assert document["command"][:2] == ["mpbench", "run"] and "--seed" in document["command"]

    # 4. A resume with other settings is refused and leaves the run as it is.
    before = snapshot(out)
    code, _, err = invoke([*argv[3:], "--resume", "--epochs", "2"])
    assert_one_line_error(
        code, err, f"cannot resume {results}: it was run with different epochs; use the same"
    )
    assert snapshot(out) == before
