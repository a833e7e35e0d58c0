"""``mpbench report``: re-render a saved run or a pytest-benchmark file (no TensorFlow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcore.face.common import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    from mpcore import report

    try:
        kind, document, source = report.load(args.path)
    except report.ReportError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out) if args.out else source.parent
    try:
        if kind == "run":
            judged = report.judge(document, args.band)  # once, for the table and every file
            table = report.run_table(document, judged=judged)
            files = report.render_run(document, out, judged=judged)
        else:
            table, files = report.render_benchmark(document, out)
    except report.ReportError as error:
        raise UsageError(f"{source}: {error}") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UsageError(
            f"{source}: a field is missing or malformed ({type(error).__name__}: {error})"
        ) from None
    except OSError as error:
        raise UsageError(f"cannot write to {out}: {error.strerror or error}") from None
    print(table)
    print(f"\nfrom {source}; written to {out}: " + ", ".join(f.name for f in files))
    return 0
