"""Plant known bugs in a copy of the repository and report which ones the tests catch.

``python tools/mutate.py`` copies the working tree to a temporary folder once, then for each
planted bug (a mutant: one exact source text replacement, listed in :data:`MUTANTS`) applies it,
runs the fast tests meant to catch it (``pytest -x``, with a timeout) and restores the file. A
mutant is *killed* when those tests fail, *survived* when they pass: a survivor is a bug the
suite would let through. Not part of CI (minutes); run it before changing
mpcore's core (the harness, the results store, the mode checks, the device table), and add a
mutant here for every bug a test was written to catch. Exit status 1 if any mutant survived.

    python tools/mutate.py                 # every mutant
    python tools/mutate.py --list          # their names
    python tools/mutate.py run_round-no-sync check-grappler   # some of them
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPBENCH = "mpcore/bench/stepbench.py"
DEVICES = "mpcore/probe/peaks.py"
RUN_ROUND_TESTS = ("tests/test_benchmarks_stepbench.py", "-k", "syncs_once")
CHECK_TESTS = ("tests/test_modes.py", "-k", "caught")
DEVICE_TESTS = ("tests/test_benchmarks_devices.py", "-k", "datasheet")
LOCK_TESTS = ("tests/test_lock_and_fingerprint.py",)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A planted bug: ``old`` (which must occur exactly once in ``path``) becomes ``new``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def _guarded(name: str, condition: str) -> Mutant:
    """A check of check_model switched off (``if X:`` becomes ``if False and X:``)."""
    return Mutant(
        name,
        "mpcore/precision/modes.py",
        f"if {condition}:",
        f"if False and {condition}:",
        CHECK_TESTS,
    )


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "run_round-no-sync",
        STEPBENCH,
        "        sync_device()  # ...and for its optimizer update",
        "        pass  # ...and for its optimizer update",
        RUN_ROUND_TESTS,
    ),
    Mutant(
        "run_round-no-loss-read",
        STEPBENCH,
        "        value = float(loss)  # waits",
        "        value = loss  # waits",
        RUN_ROUND_TESTS,
    ),
    Mutant(  # neither, so a round returns before the device finishes
        "run_round-no-sync-no-read",
        STEPBENCH,
        "        value = float(loss)  # waits for the last forward pass...\n        sync_device()",
        "        value = loss  # waits for the last forward pass...\n        pass",
        RUN_ROUND_TESTS,
    ),
    Mutant(
        "write_json_atomic-in-place",
        "mpcore/run/files.py",
        '    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=True) + "\\n")',
        '    text = json.dumps(document, indent=2, allow_nan=True) + "\\n"\n'
        '    with open(path, "w") as handle:\n'
        "        handle.write(text)\n"
        "        handle.flush()\n"
        "        os.fsync(handle.fileno())",
        ("tests/test_cli_commands.py", "-k", "write_json_atomic"),
    ),
    Mutant(  # every repeat and the warm-up share one result file, never removed
        "repeats-share-a-stale-result-file",
        "mpcore/run/plan.py",
        '    path = workdir / f"{file_stem(name)}.{tag}.result.json"\n'
        "    path.unlink(missing_ok=True)\n",
        '    path = workdir / f"{file_stem(name)}.result.json"\n',
        ("tests/test_run_lifecycle.py", "-k", "killed"),
    ),
    Mutant(  # a resume that mixes records of different replica counts
        "resume-ignores-distribution",
        "mpcore/run/store.py",
        "    if distribution is not None and isinstance(saved_distribution, Mapping):",
        "    if False and distribution is not None and isinstance(saved_distribution, Mapping):",
        ("tests/test_run_lifecycle.py", "-k", "distribution"),
    ),
    Mutant(  # resumed repeats back to back: the schedule's own rounds replaced by a plain list
        "resume-runs-repeats-back-to-back",
        "mpcore/run/plan.py",
        "    return [(configs[name], repeat) for name, repeat in interleaved_rounds(wanted)]",
        "    return [(configs[name], r) for name in wanted for r in wanted[name]]",
        ("tests/test_run_lifecycle.py", "-k", "interleave"),
    ),
    Mutant(  # --repeats auto stops after the first rounds whatever is undecided
        "auto-never-adds-a-round",
        "mpcore/run/plan.py",
        "            if not open_calls:",
        "            if True:",
        ("tests/test_run_lifecycle.py", "-k", "auto"),
    ),
    Mutant(
        "custom-step-skips-model-losses",
        "mpcore/train/custom_step.py",
        "            if model.losses:",
        "            if False and model.losses:",
        ("tests/test_training.py", "-k", "own_losses"),
    ),
    Mutant(  # a second run on one --out is let in
        "lock-not-exclusive",
        "mpcore/run/lock.py",
        "            if not _flock_soon(descriptor):",
        "            if False and not _flock_soon(descriptor):",
        LOCK_TESTS,
    ),
    Mutant(  # the lock file outlives its run: every later run reports a stale lock
        "lock-file-left-behind",
        "mpcore/run/lock.py",
        "            os.unlink(self.path)  # while still locked",
        "            pass  # while still locked",
        LOCK_TESTS,
    ),
    Mutant(  # a resume on rewritten images is let through
        "fingerprint-ignores-image-bytes",
        "mpcore/data/ships.py",
        '            images.update(hashlib.file_digest(handle, "sha256").digest())',
        "            images.update(handle.name.encode())",
        LOCK_TESTS,
    ),
    Mutant(
        "data-change-ignores-images",
        "mpcore/run/store.py",
        '    if saved.get("images_sha256") != now.get("images_sha256"):',
        "    if False:",
        LOCK_TESTS,
    ),
    Mutant(  # a resume forgets the repeats a configuration already finished
        "resume-drops-finished-repeats",
        "mpcore/run/store.py",
        '    runs = [run for run in _runs_of(earlier or {}) if run.get("repeat") != repeat]',
        "    runs = []",
        ("tests/test_run_repeats.py", "-k", "resume"),
    ),
    Mutant(  # "faster" called without the significance test, on the interval alone
        "significance-ignored",
        "mpcore/run/stats.py",
        "    faster = rejected & (low > edge)",
        "    faster = low > edge",
        ("tests/test_verdict_codes.py",),
    ),
    Mutant(  # efficiency against the replicas' total instead of one replica
        "scaling-efficiency-no-replicas",
        "mpcore/run/scaling.py",
        "    return images_per_second / (replicas * single_replica_images_per_second)",
        "    return images_per_second / single_replica_images_per_second",
        ("tests/test_distribute.py", "-k", "scaling_figures"),
    ),
    Mutant(  # the census counts a value exactly at the underflow limit as representable
        "census-underflow-boundary",
        "mpcore/precision/census.py",
        '        "underflow": int(np.count_nonzero(magnitudes <= fmt.underflow_limit)),',
        '        "underflow": int(np.count_nonzero(magnitudes < fmt.underflow_limit)),',
        ("numerics/test_representability.py",),
    ),
    Mutant(  # the overall census of many variables is the last variable's, not their sum
        "census-overall-not-summed",
        "mpcore/precision/census.py",
        "            totals[key] += value",
        "            totals[key] = value",
        ("numerics/test_gradient_census.py", "-k", "cast_census_of_the_scaled_tape"),
    ),
    _guarded("check-variable-dtype", "layer.variable_dtype != variable"),
    _guarded("check-output-dtype", 'output.dtype != "float32"'),
    _guarded("check-autoclustering", 'autoclustering_enabled() != (config.xla == "auto")'),
    _guarded("check-grappler", 'amp_rewrite_enabled() != (config.precision == "amp_rewrite")'),
    Mutant(  # the sparse figure taken for the dense one
        "datasheet-H100_SXM-fp16-sparse",
        DEVICES,
        'DevicePeak("H100 SXM", fp32=67.0, tf32=494.5, fp16=989.5,',
        'DevicePeak("H100 SXM", fp32=67.0, tf32=494.5, fp16=1979.0,',
        DEVICE_TESTS,
    ),
    Mutant(  # a hard link resolves to another path: the file compared by its name again
        "same-file-by-resolved-path",
        "mpcore/data/ships.py",
        "        key = (facts.st_dev, facts.st_ino)",
        "        key = str(image.resolve())",
        ("tests/test_reliability3.py", "-k", "hard_link"),
    ),
    Mutant(  # mkstemp's 0600 left as it is
        "results-mode-0600",
        "mpcore/run/files.py",
        "                os.fchmod(handle.fileno(), 0o666 & ~current_umask())",
        "                pass",
        ("tests/test_reliability3.py", "-k", "umask"),
    ),
    Mutant(  # the rename not made durable
        "no-folder-fsync",
        "mpcore/run/files.py",
        "    fsync_folder(path.parent)\n",
        "",
        ("tests/test_reliability3.py", "-k", "fsynced"),
    ),
    Mutant(  # Python's json reads NaN: a schema number that took it would pass a NaN median
        "schema-number-takes-nan",
        "mpcore/run/schema.py",
        "    return isinstance(value, int) or math.isfinite(value)",
        "    return True",
        ("tests/test_results_schema.py", "-k", "hostile"),
    ),
    Mutant(  # the fork server's wait status read as a plain exit code: a SIGKILLed worker reads 0
        "zygote-status-not-decoded",
        "mpcore/run/zygote.py",
        "self.returncode = os.waitstatus_to_exitcode(status)",
        "self.returncode = status >> 8",
        ("tests/test_zygote.py", "-k", "sigkill_reads_minus_9"),
    ),
    Mutant(  # every variable taken as read at run time: a fork would keep the zygote's oneDNN
        "zygote-env-always-compatible",
        "mpcore/run/zygote.py",
        "        and name not in RUNTIME_ENV\n",
        "        and False\n",
        ("tests/test_zygote.py", "-k", "import_time_variable"),
    ),
    Mutant(  # a forked worker says fresh: its smaller CPU peak RSS compared with fresh ones
        "worker-start-always-fresh",
        "mpcore/run/store.py",
        '"forked" if os.environ.get(FORKED_ENV) else "fresh"',
        '"fresh"',
        ("tests/test_cli_distribute.py", "-k", "two_local_workers_train_in_sync"),
    ),
    Mutant(  # a run's fork server stopped with its run inside a pool: one import per run again
        "pool-keeps-nothing",
        "mpcore/run/launcher.py",
        "if _pool is not None and server.fits(server.env):",
        "if False:",
        ("tests/test_zygote.py", "-k", "pool_keeps"),
    ),
    Mutant(  # the optimizer and metrics left to fit's first trace: the train step traced twice
        "fit-builds-while-tracing",
        "mpcore/train/fit.py",
        "        build(data_batch=data.element_spec)",
        "        pass",
        ("tests/test_benchmarks_stepbench.py", "-k", "kerass_train_function"),
    ),
    Mutant(  # SIGTERM left to TensorFlow's coordination service: a stuck worker waits the grace
        "cluster-worker-keeps-tf-sigterm",
        "mpcore/run/worker.py",
        "        signal.signal(signal.SIGTERM, signal.SIG_DFL)\n    return strategy",
        "        pass\n    return strategy",
        ("tests/test_distribute.py", "-k", "killing_a_worker"),
    ),
    Mutant(  # the lowest index named: a peer that failed after the killed worker hides it
        "launcher-names-a-consequence",
        "mpcore/run/launcher.py",
        "    return (killed or list(failed))[0]",
        "    return list(failed)[0]",
        ("tests/test_distribute.py", "-k", "named_before"),
    ),
    Mutant(  # a forked cluster worker left in the launcher's group: a Ctrl-C would reach it
        "cluster-worker-keeps-the-launchers-group",
        "mpcore/run/zygote_server.py",
        '        if request.get("session"):\n',
        "        if False:\n",
        ("tests/test_zygote.py", "-k", "cluster_workers"),
    ),
    Mutant(  # os._exit straight away: a thread's last write and buffered output lost
        "exit-now-skips-threading-shutdown",
        "mpcore/run/process.py",
        "    if shutdown is not None:\n        shutdown()\n",
        "    if shutdown is not None:\n        pass\n",
        ("tests/test_exit_now.py",),
    ),
)

_PEAK_LINE = re.compile(r'DevicePeak\("(?P<name>[^"]+)", (?P<fields>[^)]*)\)')


def device_table_mutants(source: str) -> list[Mutant]:
    """One mutant per GPU of the device table: one of its figures (fp32, tf32, fp16, bf16 in
    turn; fp32 where that one is None) doubled, as a sparse figure taken for dense would be."""
    mutants = []
    for index, match in enumerate(_PEAK_LINE.finditer(source)):
        fields = dict(part.split("=") for part in match["fields"].split(", "))
        key = ("fp32", "tf32", "fp16", "bf16")[index % 4]
        key = key if fields[key] != "None" else "fp32"
        wrong = {**fields, key: repr(2 * float(fields[key]))}
        new = f'DevicePeak("{match["name"]}", ' + ", ".join(f"{k}={v}" for k, v in wrong.items())
        mutants.append(
            Mutant(
                f"datasheet-{match['name'].replace(' ', '_')}-{key}",
                DEVICES,
                match[0],
                new + ")",
                DEVICE_TESTS,
            )
        )
    return mutants


def all_mutants() -> list[Mutant]:
    return [*MUTANTS, *device_table_mutants((ROOT / DEVICES).read_text())]


_NEVER_COPIED = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".tox")


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: caches, and run outputs (``results*``) at the top only, not
    mpcore's own ``results.schema.json``."""
    skipped = set(_NEVER_COPIED(folder, names))
    if Path(folder) == ROOT:
        skipped |= {name for name in names if name.startswith("results")}
    return skipped


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """Run ``pytest -x TESTS`` in ``copy``: (exit status or None on timeout, last line)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy), "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"no verdict within {timeout:.0f} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def run_mutant(copy: Path, mutant: Mutant, timeout: float) -> tuple[str, float, str]:
    """Apply ``mutant`` in ``copy``, run its tests, restore; (verdict, seconds, last line)."""
    target = copy / mutant.path
    original = target.read_text()
    if original.count(mutant.old) != 1:
        return "stale", 0.0, f"the text to replace occurs {original.count(mutant.old)} times"
    target.write_text(original.replace(mutant.old, mutant.new))
    start = time.perf_counter()
    try:
        status, line = run_tests(copy, mutant.tests, timeout)
    finally:
        target.write_text(original)
    verdict = {0: "survived", 1: "killed", None: "timeout"}.get(status, f"error {status}")
    return verdict, time.perf_counter() - start, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutants' names and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant (300)")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip checking first that each test selection passes on the unmutated copy",
    )
    args = parser.parse_args(argv)
    mutants = all_mutants()
    if args.list:
        print("\n".join(f"{m.name}  ({m.path})" for m in mutants))
        return 0
    unknown = set(args.names) - {m.name for m in mutants}
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in mutants if not args.names or m.name in args.names]
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mpbench-mutate-") as folder:
        copy = Path(folder) / "repo"
        shutil.copytree(ROOT, copy, ignore=_ignored)
        if not args.no_baseline:
            # A selection that fails unmutated would "kill" every mutant: check each once.
            for tests in dict.fromkeys(m.tests for m in chosen):
                status, line = run_tests(copy, tests, args.timeout)
                if status != 0:
                    print(f"baseline fails: pytest {' '.join(tests)}: {line}")
                    return 2
            print("baseline: every test selection passes on the unmutated copy")
        print(f"{'mutant':40s} {'verdict':9s} {'seconds':>7s}  last line of the tests")
        for mutant in chosen:
            verdict, seconds, line = run_mutant(copy, mutant, args.timeout)
            survived += verdict != "killed"
            print(f"{mutant.name:40s} {verdict:9s} {seconds:7.1f}  {line[:70]}", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
