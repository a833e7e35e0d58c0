"""The package's shape: no import cycle, each layer uses only the layers below it.

The import graph is built from the source (ast), so the test sees every import, including the
ones done lazily inside functions, without importing anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mpcore"

#: Layer of each module, by dotted-name prefix (the longest prefix wins). A module may import
#: its own layer and those below; ``bench`` and ``run`` are side by side and never meet.
LAYERS: dict[str, tuple[int, str]] = {
    "mpcore.names": (0, "vocabulary"),
    "mpcore.probe": (1, "probe"),
    "mpcore": (2, "core"),
    "mpcore.bench": (3, "bench"),
    "mpcore.run": (3, "run"),
    "mpcore.face": (4, "face"),
    "mpcore.report": (4, "face"),  # top level: `import mpcore.report` is the documented name
    "mpcore.__main__": (4, "face"),
}
#: Modules allowed at most this many lines, so that each can be read at once.
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The mpcore modules ``path`` imports (``from mpcore.x import y`` counts ``mpcore.x.y`` when
    that is a module, else ``mpcore.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in known else node.module for name in names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def layer(name: str) -> tuple[int, str]:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) - {name, "mpcore"} for name, path in modules().items()}


def test_the_import_graph_has_no_cycle(graph: dict[str, set[str]]) -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_each_layer_imports_only_its_own_and_lower_layers(graph: dict[str, set[str]]) -> None:
    wrong = []
    for name, targets in sorted(graph.items()):
        rank, kind = layer(name)
        for target in sorted(targets):
            target_rank, target_kind = layer(target)
            upward = target_rank > rank
            sideways = target_rank == rank and target_kind != kind
            if upward or sideways:
                wrong.append(f"{name} ({kind}) imports {target} ({target_kind})")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_nothing_from_run_or_face(graph: dict[str, set[str]]) -> None:
    core = [name for name in graph if layer(name)[1] == "core"]
    assert {"mpcore.modes", "mpcore.training", "mpcore.replicas"} <= set(core)
    for name in core:
        above = {t for t in graph[name] if layer(t)[1] in ("run", "face", "bench")}
        assert not above, f"{name} imports {sorted(above)}"


def test_the_checker_itself_sees_a_planted_cycle(tmp_path: Path) -> None:
    # The graph test above must be able to fail: a lazy import inside a function counts.
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from mpcore.face.cli import main\n")
    assert imports_of(planted, set(modules())) == {"mpcore.face.cli"}


def test_every_module_is_short_enough_to_read_at_once() -> None:
    long = {
        name: length
        for name, path in modules().items()
        if (length := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_report_and_the_vocabulary_import_no_tensorflow() -> None:
    # `mpbench report` re-renders a saved run in about a second: it must not pay for TensorFlow.
    code = (
        "import sys, mpcore.report, mpcore.bench.table, mpcore.names, mpcore.run.store; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
