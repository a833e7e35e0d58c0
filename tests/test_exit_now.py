"""``mpcore.run.process.exit_now``: how ``mpbench`` and a fresh worker end, without the
interpreter's teardown but with what it does that matters. In a child process: ``os._exit`` is
what is tested (no TensorFlow: the cost it saves is not measured here, docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import atexit, concurrent.futures, sys, threading, time
from mpcore.run.process import exit_now
out = sys.argv[1]

def late():
    time.sleep(0.3)
    with open(out + ".thread", "w") as handle:
        handle.write("joined")

threading.Thread(target=late).start()  # not a daemon: waited for
pool = concurrent.futures.ThreadPoolExecutor(1)  # left open: its idle thread must not hang
pool.submit(int).result()
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
sys.stdout.write("buffered, no newline")
exit_now(3)
"""


def test_exit_now_waits_for_threads_runs_atexit_and_flushes_then_exits_with_the_status(
    tmp_path: Path,
) -> None:
    out = tmp_path / "x"
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 3, completed.stderr
    assert completed.stdout == "buffered, no newline"
    assert out.with_suffix(".thread").read_text() == "joined"
    assert out.with_suffix(".atexit").read_text() == "ran"
    assert completed.stderr == ""
