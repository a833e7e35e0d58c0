"""The life of a run: each repeat's own result file, a killed repeat and its resume, the
schedule, the settings a resume must share, the A/A control, ``--repeats auto``, progress, and
the table, CSV and plot telling one story.

One real run (a real worker SIGKILLed mid-repeat, then ``--resume``) is the slow scenario;
everything else calls the functions in-process, with the worker replaced where the process
boundary is not the point.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mpcore.face.cli import main
from mpcore.names import BASELINE
from mpcore.run.schema import RESULTS_FILE

# --------------------------------------------------------------------------------------------
# A real worker killed by a real signal in its repeat, then --resume


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``mpbench run --repeats 2`` (one configuration, tiny) whose second repeat's worker
    SIGKILLs itself after its first step, then ``--resume`` without the fault: the results.json
    after each, and their exit codes."""
    from mpcore.data.synthetic import write_synthetic_ships

    work = tmp_path_factory.mktemp("killed")
    root = write_synthetic_ships(work / "ships", per_class=8, image_size=32)
    argv = ["run", "--profile", "quick", "--data", str(root), "--precision", "float32"]
    argv += ["--epochs", "2", "--image-size", "32", "--batch-size", "4", "--repeats", "2"]
    argv += ["--out", str(work / "run")]
    path = work / "run" / RESULTS_FILE
    with pytest.MonkeyPatch.context() as patch:
        for name in ("TF_CONFIG", "MPBENCH_WORKER_FAULT"):
            patch.delenv(name, raising=False)
        patch.setenv("MPBENCH_CACHE", str(work / "cache"))
        patch.setenv("MPBENCH_FAULT", f"{BASELINE}=kill@2")
        killed_code = main(argv)
        killed = json.loads(path.read_text())
        patch.delenv("MPBENCH_FAULT")
        resumed_code = main([*argv, "--resume"])
        resumed = json.loads(path.read_text())
    return {"killed": killed, "killed_code": killed_code, "resumed": resumed, "code": resumed_code}


@pytest.mark.slow
def test_a_killed_repeat_is_failed_with_its_signal_never_an_earlier_repeat(
    killed_then_resumed: dict[str, Any],
) -> None:
    document = killed_then_resumed["killed"]
    assert killed_then_resumed["killed_code"] == 1
    (record,) = document["configurations"]
    first, second = record["repeats"]
    assert (first["repeat"], first["status"]) == (0, "ok")
    # A shared result file would have handed repeat 2 repeat 1's record: ok, same ms/step.
    assert (second["repeat"], second["status"], second["ms_per_step"]) == (1, "failed", None)
    assert "killed by SIGKILL" in second["reason"]
    assert record["status"] == "failed"
    assert record["reason"].startswith("repeat 2: worker killed by SIGKILL")
    assert document["warmup"]["status"] == "ok"  # the fault waits for repeat 2, not the warm-up


@pytest.mark.slow
def test_resume_reruns_exactly_the_killed_repeat(killed_then_resumed: dict[str, Any]) -> None:
    before = killed_then_resumed["killed"]["configurations"][0]["repeats"][0]
    document = killed_then_resumed["resumed"]
    assert killed_then_resumed["code"] == 0
    (record,) = document["configurations"]
    assert record["status"] == "ok" and record["reason"] is None
    first, second = record["repeats"]
    assert first == before  # repeat 1 kept as it was, not run again
    assert (second["repeat"], second["status"]) == (1, "ok")
    assert second["ms_per_step"] > 0 and second["finished"] >= first["finished"]
    assert document["warmup"]["status"] == "ok"  # the resumed repeat got a fresh warm-up
