"""Reliability: never lose a finished result, and no traceback on any input.

One test (or one parametrized case) per case, through the CLI. The
in-process ``invoke`` fixture runs most of them; subprocesses only where a real process matters
(the run lock, SIGKILL, SIGTERM). The session's quick run (tests/scenarios.py: four
configurations, two finished, on 40 images) is what they resume; each test that resumes it
works on a private copy and, where the command must refuse, checks that the copy's results.json
and results.csv are byte for byte as they were.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from scenarios import QUICK_FAILING, QUICK_SETTINGS

from mpcore.data.ships import (
    MAX_IMAGE_PIXELS,
    csv_path,
    find_bad_images,
    images_dir,
    read_ship_index,
)
from mpcore.run.lock import LOCK_FILE
from mpcore.run.process import EXIT_TERMINATED, FAULT_ENV
from mpcore.run.schema import RESULTS_FILE

#: The quick run's settings (a resume must repeat them); its data: 40 images, 30 training.
TINY = QUICK_SETTINGS
FLOAT32 = "float32+xla_off"
#: For the runs of the lock and SIGTERM tests, which are stopped before they end.
ONE_EPOCH = (*TINY[:-1], "1")


def one_line(code: int, err: str, status: int, *expected: str, command: str = "run") -> str:
    """Assert ``err`` is one ``mpbench COMMAND: ...`` line holding ``expected``, exit ``status``."""
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mpbench {command}: "), err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def results_files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (RESULTS_FILE, "results.csv")}


@pytest.fixture(scope="session")
def finished(quick_run) -> Path:
    """The folder of the session's quick run: its data copy (``data``) and output (``run``)."""
    return quick_run.out.parent


@pytest.fixture
def resumable(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished run and of its data: (data, out); results.json is
    pointed at the copied data, as if the run had been made there."""
    work = Path(shutil.copytree(finished, tmp_path / "work"))
    data, out = work / "data", work / "run"
    document = json.loads((out / RESULTS_FILE).read_text())
    document["data"]["root"] = str(data.resolve())
    (out / RESULTS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return data, out


def resume_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), *TINY, "--out", str(out), "--resume", *extra]


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads((out / RESULTS_FILE).read_text())["configurations"]}


# --------------------------------------------------------------------------------------------
# 1. A resume with a narrower --precision keeps what finished


def test_1_resume_with_another_precision_keeps_finished_work(
    resumable: tuple[Path, Path], invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out = resumable
    before = records(out)
    assert before[QUICK_FAILING]["reason"].startswith("out of memory")
    # The failed configuration runs again and fails at once (a planted error): quick, exit 1.
    monkeypatch.setenv(FAULT_ENV, f"{QUICK_FAILING}=error")
    code, stdout, _ = invoke(resume_argv(data, out, "--precision", "mixed_bfloat16"))
    assert code == 1
    kept = [FLOAT32, "mixed_float16+xla_off", "amp_rewrite+xla_off"]
    assert f"resuming: keeping {', '.join(kept)} (not in this plan) as recorded" in stdout
    after = records(out)
    assert list(after) == list(before)  # every record kept, in its place
    for name in kept:
        assert after[name] == before[name]
    assert after[QUICK_FAILING]["status"] == "failed"
    assert not after[QUICK_FAILING]["reason"].startswith("out of memory")  # it ran again
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in csv_rows[1:]] == list(before)


# --------------------------------------------------------------------------------------------
# 2. The run lock: one run per --out; a SIGKILLed holder's lock is taken over


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mpcore", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_2_two_runs_on_one_out_and_a_stale_lock(
    tiny_ships: Path, tmp_path: Path, cli_env, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--data", str(tiny_ships), *ONE_EPOCH, "--precision", "float32"]
    argv += ["--out", str(out)]
    # The holder is another process (what the lock is for); the second run, refused, can be this
    # one: a process of its own would add only a start-up.
    holder = _start(argv, tmp_path, cli_env(tmp_path))
    try:
        deadline = time.monotonic() + 240
        lock = out / LOCK_FILE
        while not (lock.is_file() and lock.read_text().strip() == str(holder.pid)):
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the run took no lock within 240 s"
            time.sleep(0.1)
        code, _, err = invoke(argv)
        one_line(
            code, err, 2, f"--out {out} is in use by another mpbench run (pid {holder.pid}, lock "
        )
        assert holder.poll() is None, "the holder ended before it could be killed"
        assert lock.read_text().strip() == str(holder.pid), "the refused run touched the lock"
        while not (out / RESULTS_FILE).is_file():  # a run to resume: the lock comes first
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline, "the run wrote no results.json within 240 s"
            time.sleep(0.1)
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    # The next run takes the dead holder's lock over (the planted fault keeps it short).
    monkeypatch.setenv(FAULT_ENV, f"{FLOAT32}=error")
    code, stdout, _ = invoke([*argv, "--resume"])
    assert code == 1
    assert f"lock: taking over the stale lock of pid {holder.pid} (no longer running)" in stdout
    assert not (out / LOCK_FILE).exists(), "the lock file outlived its run"


# --------------------------------------------------------------------------------------------
# 3, 8, 13: images the pipeline cannot decode are found before training


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (its data is a token)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


IMAGE_CASES = {
    "3: a 1-bit BMP saved as .jpg": (
        lambda path: Image.open(path).convert("1").save(path, format="BMP"),
        "000003.jpg (Number of channels inherent in the image must be 1, 3 or 4, was 0)",
    ),
    "8: a 20000x20000 image": (
        lambda path: path.write_bytes(_png_header_only(20000, 20000)),
        f"000003.jpg (400,000,000 pixels, more than the limit of {MAX_IMAGE_PIXELS:,})",
    ),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_images_the_pipeline_cannot_decode_are_named_before_training(
    case: str, resumable: tuple[Path, Path], invoke
) -> None:
    data, out = resumable
    damage, expected = IMAGE_CASES[case]
    damage(images_dir(data) / "000003.jpg")
    before = results_files(out)
    code, _, err = invoke(resume_argv(data, out))
    one_line(code, err, 2, f"1 unreadable image: {expected}; fix or remove them")
    assert results_files(out) == before


# --------------------------------------------------------------------------------------------
# 4. A resume on changed data is refused, naming the change


DATA_CHANGES = {
    "rows removed": (
        lambda data: csv_path(data).write_text(
            "\n".join(csv_path(data).read_text().splitlines()[:-5]) + "\n"
        ),
        "train.csv changed (40 rows, now 35)",
    ),
    "an image rewritten": (
        lambda data: (
            Image.open(images_dir(data) / "000007.jpg")
            .rotate(90)
            .save(images_dir(data) / "000007.jpg", format="JPEG")
        ),
        "the content of the listed images changed",
    ),
}


@pytest.mark.parametrize("case", DATA_CHANGES)
def test_4_resume_on_changed_data_is_refused(
    case: str, resumable: tuple[Path, Path], invoke
) -> None:
    data, out = resumable
    change, expected = DATA_CHANGES[case]
    change(data)
    before = results_files(out)
    code, _, err = invoke(resume_argv(data, out))
    one_line(
        code,
        err,
        2,
        f"cannot resume {out / RESULTS_FILE}: the data set changed since the run began: {expected}",
    )
    assert results_files(out) == before


# --------------------------------------------------------------------------------------------
# 5, 6, 8, 9, 13: options checked up front, each error naming its own option


OPTION_CASES = {
    "5: --seed 2**32": (["--seed", str(2**32)], "argument --seed: must be in 0..4294967295"),
    "8: --seed -1 with --data": (["--seed", "-1"], "argument --seed: must be in 0..4294967295"),
    "6: --precision ''": (["--precision", ""], "--precision: no value given"),
    "6: --precision ,": (["--precision", ","], "--precision: no value given"),
    "8: --image-size 100000": (
        ["--image-size", "100000"],
        "--batch-size 8 with --image-size 100000: one batch is ",
    ),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_bad_options_are_refused_before_anything_is_written(
    case: str, resumable: tuple[Path, Path], invoke
) -> None:
    data, out = resumable
    extra, expected = OPTION_CASES[case]
    before = results_files(out)
    code, _, err = invoke([*resume_argv(data, out), *extra])
    one_line(code, err, 2, expected)
    assert results_files(out) == before


def test_9_seed_on_synthetic_data_names_seed_and_8_no_cache_is_left(
    tmp_path: Path, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, _, err = invoke(["run", "--seed", "-1", "--out", str(out)])
    one_line(code, err, 2, "argument --seed: must be in 0..4294967295, got -1")
    code, _, err = invoke(["run", "--image-size", "100000", "--out", str(out)])
    one_line(code, err, 2, "--image-size 100000: one batch is ", "largest image size at this")
    assert not (tmp_path / "cache").exists() and not out.exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--seed", "-1"], "argument --seed: must be in 0..4294967295, got -1"),
        (["--batch-size", str(10**9)], f"--batch-size {10**9} with --image-size 64: one batch"),
    ],
)
def test_13_numerics_refuses_a_negative_seed_and_a_huge_batch(
    extra: list[str], expected: str, tmp_path: Path, invoke
) -> None:
    out = tmp_path / "numerics"
    code, _, err = invoke(["numerics", "--out", str(out), *extra])
    one_line(code, err, 2, expected, command="numerics")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 7. An out folder that refuses results.json mid-run: the records are kept and rescued


def test_7_unwritable_results_are_rescued_to_a_named_file(
    resumable: tuple[Path, Path], invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mpcore.run import files

    data, out = resumable
    real_write = files.write_json_atomic
    tries: list[Path] = []

    def refusing(path: Path, document: Any) -> None:
        # Refused from the save that holds the configuration's new (planted) failure on.
        again = [r for r in document["configurations"] if r.get("name") == QUICK_FAILING]
        if Path(path).parent == out and not again[0]["reason"].startswith("out of memory"):
            tries.append(path)
            raise OSError(30, "Read-only file system")
        real_write(path, document)

    monkeypatch.setattr(files, "write_json_atomic", refusing)
    monkeypatch.setattr(files, "SAVE_PAUSE_SECONDS", 0.0)
    monkeypatch.setenv(FAULT_ENV, f"{QUICK_FAILING}=error")
    code, stdout, err = invoke(resume_argv(data, out, "--precision", "float32", "mixed_bfloat16"))
    line = one_line(
        code,
        err,
        1,
        f"cannot write {out / RESULTS_FILE} (Read-only file system) after 3 tries; "
        "the run so far is saved in ",
    )
    assert len(tries) == 3 and stdout.count("trying again in 0 s") == 2
    rescued = Path(line.rsplit(" ", 1)[1])
    try:
        saved = {r["name"]: r for r in json.loads(rescued.read_text())["configurations"]}
    finally:
        rescued.unlink()
    assert saved[FLOAT32]["status"] == "ok"
    assert saved[QUICK_FAILING]["status"] == "failed"
    assert not saved[QUICK_FAILING]["reason"].startswith("out of memory")


# --------------------------------------------------------------------------------------------
# 10. Image names: aliases and escapes are errors naming the line


NAME_CASES = {
    "alias ./x.jpg": (
        "./000000.jpg",
        "image './000000.jpg' is the same file as '000000.jpg' on line 2",
    ),
    "traversal": ("../train.csv", "image '../train.csv' leads outside "),
    "absolute path": ("/etc/hostname", "image '/etc/hostname' is not a name relative to "),
}


@pytest.mark.parametrize("case", NAME_CASES)
def test_10_aliased_and_escaping_image_names_are_refused(
    case: str, resumable: tuple[Path, Path], invoke
) -> None:
    data, out = resumable
    name, expected = NAME_CASES[case]
    table = csv_path(data)
    table.write_text(table.read_text() + f"{name},1\n")
    before = results_files(out)
    code, _, err = invoke(resume_argv(data, out))
    one_line(code, err, 2, f"{table}:42: {expected}")
    assert results_files(out) == before


def test_10_a_link_out_of_images_is_refused(tiny_ships: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(tiny_ships, tmp_path / "ships"))
    (images_dir(data) / "000000.jpg").unlink()
    (images_dir(data) / "000000.jpg").symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"train\.csv:2: image '000000\.jpg' leads outside"):
        read_ship_index(data)


# --------------------------------------------------------------------------------------------
# 11, 12: JSON inputs of the wrong shape


def test_11_resume_of_results_with_a_string_settings(resumable: tuple[Path, Path], invoke) -> None:
    data, out = resumable
    document = json.loads((out / RESULTS_FILE).read_text())
    document["settings"] = "small"
    (out / RESULTS_FILE).write_text(json.dumps(document))
    before = results_files(out)
    code, _, err = invoke(resume_argv(data, out))
    one_line(
        code, err, 2, f"{out / RESULTS_FILE}: key 'settings' should be an object, found a string"
    )
    assert results_files(out) == before


REPORT_CASES = {
    "11: configurations [1, 'x']": (
        {"schema": "mpbench-results/1", "configurations": [1, "x"]},
        "key 'configurations[0]' should be an object, found a number",
    ),
    "11: a result number as text": (
        "finished-wrong-type",
        "key 'configurations[0].result.ms_per_step' should be a number, found a string",
    ),
    "12: an empty benchmark file": (
        {"benchmarks": []},
        "key 'benchmarks' is an empty list: the file holds no benchmark",
    ),
    "12: a benchmark's extra_info a list": (
        {"benchmarks": [{"group": "g", "extra_info": [1]}]},
        "key 'benchmarks[0].extra_info' should be an object, found a list",
    ),
}


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_of_malformed_json_names_the_key(
    case: str, finished: Path, tmp_path: Path, invoke
) -> None:
    document, expected = REPORT_CASES[case]
    if document == "finished-wrong-type":
        document = json.loads((finished / "run" / RESULTS_FILE).read_text())
        document["configurations"][0]["result"]["ms_per_step"] = "fast"
    path = tmp_path / "input.json"
    path.write_text(json.dumps(document))
    code, _, err = invoke(["report", str(path)])
    one_line(code, err, 2, f"{path}: {expected}", command="report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json"]


def test_11_report_passes_over_a_dangling_json_link(finished: Path, tmp_path: Path, invoke) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "newest.json").symlink_to(tmp_path / "gone.json")
    code, _, err = invoke(["report", str(folder)])
    one_line(
        code,
        err,
        2,
        f"{folder} holds no results.json and no pytest-benchmark JSON file",
        command="report",
    )
    shutil.copy(finished / "run" / RESULTS_FILE, folder / "run.json")
    code, stdout, err = invoke(["report", str(folder), "--out", str(tmp_path / "rendered")])
    assert code == 0, err
    assert FLOAT32 in stdout and f"from {folder / 'run.json'}" in stdout


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_12_weights_of_another_architecture_and_text_weights(
    resumable: tuple[Path, Path], tmp_path: Path, invoke
) -> None:
    import keras

    data, out = resumable
    other = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(other)
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    before = results_files(out)
    code, _, err = invoke([*resume_argv(data, out), "--weights", str(other)])
    line = one_line(
        code,
        err,
        2,
        f"--weights: cannot load weights {other} into small (saved from another architecture?): "
        "A total of 8 objects could not be loaded",
    )
    # Keras 3.11+ also warns once per nested container it skips (3.10 does not): the warnings
    # are summarised in the same line, never printed.
    assert "Keras warned" not in line or "time(s), first: Skipping nested" in line, line
    code, _, err = invoke([*resume_argv(data, out), "--weights", str(text)])
    one_line(code, err, 2, f"--weights: {text} is not a Keras weights file")
    assert results_files(out) == before


# --------------------------------------------------------------------------------------------
# 13. SIGTERM is handled like Ctrl-C: a message, exit 143, no temporary folder left


@pytest.mark.slow
def test_13_sigterm_stops_the_run_cleanly(tiny_ships: Path, tmp_path: Path, cli_env) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    out = tmp_path / "out"
    argv = ["run", "--data", str(tiny_ships), *ONE_EPOCH, "--precision", "float32"]
    argv += ["--out", str(out)]
    process = _start(argv, tmp_path, cli_env(tmp_path, TMPDIR=str(private_tmp)))
    try:
        deadline = time.monotonic() + 240
        while not list(private_tmp.glob("mpbench-*")):  # the run's work folder: training began
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run did not start training within 240 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == EXIT_TERMINATED, stderr
    assert "Traceback" not in stderr
    assert "terminated (SIGTERM): 0 of 1 configuration(s) finished" in stdout
    assert json.loads((out / RESULTS_FILE).read_text())["status"] == "interrupted"
    assert not list(private_tmp.glob("mpbench-*")), "a temporary folder was left behind"
    assert not (out / LOCK_FILE).exists()


# --------------------------------------------------------------------------------------------
# Fuzz: random image bytes through the pre-flight check and the pipeline


def _image_bytes(kind: str, mode: str, size: tuple[int, int], cut: float) -> bytes:
    rng = np.random.default_rng(size[0] * 31 + size[1])
    if kind == "random":
        data = rng.bytes(size[0] * size[1])
    else:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format=kind)
        data = buffer.getvalue()
    return data[: max(1, int(len(data) * cut))] if cut < 1 else data


# The fuzzed files are damaged on purpose: what PIL warns about them (a corrupt EXIF block, tag
# data past the end, a truncated read; which ones depends on the examples drawn) is the input.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "random")),
    mode=st.sampled_from(("1", "L", "P", "RGB", "RGBA", "I;16")),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    cut=st.sampled_from((1.0, 1.0, 0.5, 0.05)),
)
def test_fuzzed_image_bytes_pass_the_check_only_if_the_pipeline_decodes_them(
    tiny_ships: Path,
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    mode: str,
    size: tuple[int, int],
    cut: float,
) -> None:
    from mpcore.data.ships import make_dataset
    from mpcore.models.registry import model_spec

    try:
        raw = _image_bytes(kind, mode, size, cut)
    except (OSError, ValueError, KeyError):  # PIL cannot write this mode in this format
        raw = None
    # assume(), not return: hypothesis draws another example, so max_examples counts only
    # files that reach the check.
    assume(raw is not None)
    root = tmp_path_factory.mktemp("fuzz-image")
    images_dir(root).mkdir(parents=True)
    (images_dir(root) / "a.jpg").write_bytes(raw)
    csv_path(root).write_text("image,category\na.jpg,1\n")
    index = read_ship_index(root)
    bad = find_bad_images(index)
    event("refused by the check" if bad else "passed the check")
    if bad:
        assert "\n" not in bad[0].reason and bad[0].reason
        return
    dataset = make_dataset(index, 8, 1, model_spec("small").preprocess, shuffle=False)
    images, _ = next(iter(dataset))
    assert images.shape == (1, 8, 8, 3)
