"""Count the Python processes that import TensorFlow while a command runs (the test suite, say).

    python tools/tf_processes.py -- python -m pytest -m "not slow"

Every Python process started under the command (the pytest process, ``mpbench run`` parents,
their fork servers and workers, cluster members, ``python -c`` probes; a worker forked by a fork
server imports nothing and is not counted) imports a ``sitecustomize`` this tool puts
first on ``PYTHONPATH``; it records the process the moment it imports TensorFlow, so a process
that is killed later (the signal tests) is counted too. Each TensorFlow start-up costs seconds
on a small CPU, which is why the suite's time follows this number.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "MPBENCH_TF_PROCESS_DIR"

SITECUSTOMIZE = '''
import os, sys

class _RecordTensorFlow:
    """Records this process in $MPBENCH_TF_PROCESS_DIR when it first imports tensorflow."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            sys.meta_path.remove(self)
            folder = os.environ.get("MPBENCH_TF_PROCESS_DIR")
            if folder:
                with open(os.path.join(folder, str(os.getpid())), "w") as record:
                    # An xdist worker is a bare "python -c"; its children inherit the variable.
                    worker = os.environ.get("PYTEST_XDIST_WORKER") and sys.argv[:1] == ["-c"]
                    argv = ["pytest-xdist-worker"] if worker else sys.argv
                    record.write(" ".join(argv)[:300])
        return None

sys.meta_path.insert(0, _RecordTensorFlow())
'''


def kind(argv: str) -> str:
    """A short name for what a recorded process was, from its ``sys.argv`` (``python -m X``
    leaves the module's file path in ``sys.argv[0]``)."""
    first = argv.split(" ")[0]
    if first.endswith(("mpcore/run/worker.py", "mpcore.run.worker")):
        return "training worker (python -m mpcore.run.worker)"
    if first.endswith(("mpcore/run/zygote_server.py", "mpcore.run.zygote_server")):
        return "fork server of the workers (python -m mpcore.run.zygote_server)"
    if first.endswith(("mpcore/__main__.py", "/mpbench")):
        return "mpbench command (python -m mpcore, mpbench)"
    if first == "pytest-xdist-worker":
        return "pytest-xdist worker (pytest -n)"
    if "pytest" in first or first.endswith("py.test"):
        return "pytest (the session, pytester or benchmark subprocesses)"
    if first == "-c":
        return "python -c probe"
    return f"other: {first}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] or [sys.executable, "-m", "pytest"]
    with tempfile.TemporaryDirectory(prefix="tf-processes-") as folder:
        hook = Path(folder, "hook")
        records = Path(folder, "records")
        hook.mkdir()
        records.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
        env[ENV] = str(records)
        started = time.monotonic()
        code = subprocess.call(command, env=env)
        seconds = time.monotonic() - started
        lines = [path.read_text() for path in records.iterdir()]
    counts = collections.Counter(kind(line) for line in lines)
    print(f"\n[tf_processes] {len(lines)} TensorFlow-importing processes in {seconds:.0f} s")
    for name, number in counts.most_common():
        print(f"[tf_processes] {number:4d}  {name}")
    return code


if __name__ == "__main__":
    sys.exit(main())
