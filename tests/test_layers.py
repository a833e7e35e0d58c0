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
    "mpcore": (4, "face"),  # the package's face: the lazy public API (importlib, no static imports)
    "mpcore.names": (0, "vocabulary"),
    "mpcore.probe": (1, "probe"),
    **{f"mpcore.{package}": (2, "core") for package in ("precision", "models", "data", "user")},
    **{f"mpcore.{package}": (2, "core") for package in ("train", "check")},
    "mpcore.bench": (3, "bench"),
    "mpcore.run": (3, "run"),
    "mpcore.face": (4, "face"),
    "mpcore.report": (4, "face"),  # `import mpcore.report` is the documented name; no TensorFlow
    "mpcore.__main__": (4, "face"),
}
#: Inside the core, each package's rank: a core module imports its own package or a package of
#: a lower rank, never one of its rank or above (``models`` and ``data`` never meet).
CORE_RANKS: dict[str, int] = {
    "mpcore.precision": 0,  # modes, float8, the cast census
    "mpcore.models": 1,  # the registry, FLOPs
    "mpcore.data": 1,  # ships, the generated set
    "mpcore.user": 2,  # the user's model and data (uses models and data)
    "mpcore.train": 3,  # settings, fit, the custom step, replicas
    "mpcore.check": 4,  # `mpbench check`'s engine (trains a few steps)
}
#: The only modules at the top of the package: its face and the vocabulary.
TOP_LEVEL = {"mpcore", "mpcore.__main__", "mpcore.names"}
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


def core_package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def core_import_problems(graph: dict[str, set[str]]) -> list[str]:
    """Imports between core packages that go up or sideways in :data:`CORE_RANKS`."""
    wrong = []
    for name, targets in sorted(graph.items()):
        if layer(name)[1] != "core":
            continue
        package = core_package(name)
        for target in sorted(targets):
            if layer(target)[1] != "core" or core_package(target) == package:
                continue
            if CORE_RANKS[core_package(target)] >= CORE_RANKS[package]:
                wrong.append(f"{name} ({package}) imports {target} ({core_package(target)})")
    return wrong


def test_core_packages_import_only_lower_core_packages(graph: dict[str, set[str]]) -> None:
    assert {core_package(name) for name in graph if layer(name)[1] == "core"} == set(CORE_RANKS)
    assert not core_import_problems(graph), "\n".join(core_import_problems(graph))


def test_a_planted_upward_core_import_fails(graph: dict[str, set[str]]) -> None:
    # The rule must be able to fail: precision (rank 0) reaching up into train (rank 3), and
    # the sibling packages models and data meeting, are both reported.
    planted = {name: set(targets) for name, targets in graph.items()}
    planted["mpcore.precision.modes"].add("mpcore.train.fit")
    planted["mpcore.data.ships"].add("mpcore.models.registry")
    problems = core_import_problems(planted)
    assert "mpcore.precision.modes (mpcore.precision) imports mpcore.train.fit (mpcore.train)" in (
        problems
    )
    assert any(p.startswith("mpcore.data.ships (mpcore.data) imports") for p in problems)


def test_the_package_top_holds_only_its_face_and_vocabulary() -> None:
    top = {
        name
        for name in modules()
        if name.count(".") <= 1 and not (PACKAGE / name.split(".")[-1]).is_dir()
    }
    assert top == TOP_LEVEL


def test_the_core_imports_nothing_from_run_or_face(graph: dict[str, set[str]]) -> None:
    core = [name for name in graph if layer(name)[1] == "core"]
    assert {"mpcore.precision.modes", "mpcore.train.fit", "mpcore.train.replicas"} <= set(core)
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


def test_no_dead_code_in_the_package() -> None:
    # vulture at 80% confidence: unused imports, unreachable code, unused variables and
    # arguments. Protocol parameters nobody reads (``__exit__``, signal handlers) are named
    # with a leading underscore, which vulture treats as declared unused.
    from vulture import Vulture

    scan = Vulture()
    scan.scavenge([str(PACKAGE)])
    unused = [item.get_report() for item in scan.get_unused_code(min_confidence=80)]
    assert not unused, "\n".join(unused)
