"""The docs cannot drift from the command line: every command shown parses, every option is told.

Every ``mpbench ...`` and ``pytest ... --mp-...`` line in a code block of README.md and docs/*.md
is parsed by the real parsers (``mpcore.face.cli.build_parser()`` and the options the pytest
plugin registers), never run: an unknown option, a bad choice or an unknown precision, XLA mode or
strategy is a failure naming the file and line. Every option of every ``mpbench`` command must
appear in its section of docs/cli.md or on its own page, with its default where the parser has
one; every ``--mp-*`` option in docs/benchmarks.md. The lists of commands, precisions and exit
codes the docs give are compared with the code's own constants.

The checkers are plain functions of text and parsers, so the last tests plant a wrong option in a
code block and an undocumented option in a parser and see each reported.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import mpcore
from mpcore import names
from mpcore.bench import plugin
from mpcore.face.cli import build_parser
from mpcore.face.common import EXIT_USAGE
from mpcore.face.run_cmd import PROFILES
from mpcore.run.process import EXIT_INTERRUPTED, EXIT_TERMINATED

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Where a command's options may be told besides its ``## mpbench COMMAND`` section of cli.md.
COMMAND_PAGES = {"check": "check.md", "profile": "own-model.md", "run": "scaling-out.md"}
#: Exit statuses of ``mpbench run``: success, some configuration failed, and the named ones.
RUN_EXIT_CODES = {0, 1, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED}
#: Options whose values are names the command checks after parsing (not argparse choices).
NAMED_VALUES = {
    ("run", "precision"): names.PRECISIONS,
    ("run", "xla"): names.XLA_MODES,
    ("run", "strategy"): names.STRATEGIES,
    ("pytest", "mp_precision"): names.PRECISIONS,
    ("pytest", "mp_xla"): names.XLA_MODES,
    ("pytest", "mp_step"): names.STEP_KINDS,
}
#: ``mpbench run`` options whose default comes from the profile (``Profile`` field).
PROFILE_DEFAULTS = {"repeats": "repeats", "synthetic_per_class": "synthetic_per_class"}
NUMBER_WORDS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven")))
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}


# --------------------------------------------------------------------------------------------
# Reading the docs


def pages() -> dict[str, str]:
    """README.md and every docs/*.md, by their path relative to the repository."""
    paths = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, command)`` of each command in the text's shell code blocks: continuation
    lines joined, a console block's ``$`` prompt removed (its other lines are output)."""
    language: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*```\s*(\w*)", line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language not in SHELL_BLOCKS:
            continue
        if language == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not pending:
            start = number
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            yield start, pending.strip()
            pending = ""


def commands_of(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (split at ``&&``, ``||``, ``;``, ``|``), each without
    its leading ``VAR=value`` assignments, redirections and comment."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = [*lexer, ";"]
    except ValueError:  # not shell (an unclosed quote): a tree or prose in a plain block
        return
    words: list[str] = []
    redirect = False
    for token in tokens:
        if token in {"&&", "||", ";", "|", "&"}:
            while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                words.pop(0)
            if words:
                yield words
            words = []
        elif redirect:
            redirect = False
        elif set(token) <= set("<>&"):
            redirect = True
        else:
            words.append(token)


def program_of(words: list[str]) -> tuple[str, list[str]]:
    """``("mpbench", args)``, ``("pytest", args)`` or ``("", [])`` for another program."""
    if words[0] == "mpbench":
        return "mpbench", words[1:]
    if words[1:3] == ["-m", "mpcore"] and Path(words[0]).name.startswith("python"):
        return "mpbench", words[3:]
    if words[0] == "pytest":
        return "pytest", words[1:]
    if words[1:3] == ["-m", "pytest"] and Path(words[0]).name.startswith("python"):
        return "pytest", words[3:]
    return "", []


# --------------------------------------------------------------------------------------------
# The parsers


class RecordingParser:
    """Stands in for pytest's parser in ``pytest_addoption``: builds an argparse parser of the
    registered options (pytest's ``addoption`` takes argparse's arguments)."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(prog="pytest", add_help=False, allow_abbrev=False)

    def getgroup(self, *_args: object, **_kwargs: object) -> RecordingParser:
        return self

    def addoption(self, *flags: str, **kwargs: object) -> None:
        self.parser.add_argument(*flags, **kwargs)


def plugin_parser() -> argparse.ArgumentParser:
    recorder = RecordingParser()
    plugin.pytest_addoption(recorder)
    return recorder.parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's optional arguments but ``--help``."""
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def parse_error(parser: argparse.ArgumentParser, args: Sequence[str], known: bool = False) -> str:
    """argparse's complaint about ``args`` ('' when they parse); ``known``: options of other
    plugins (pytest's own, pytest-benchmark's) are left for them."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            if known:
                namespace, rest = parser.parse_known_args(args)
            else:
                namespace, rest = parser.parse_args(args), []
    except SystemExit as stop:
        return "" if stop.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return _unknown_mp_options(rest) or _bad_names(namespace)


def _unknown_mp_options(rest: list[str]) -> str:
    unknown = [word.split("=")[0] for word in rest if word.startswith("--mp")]
    return f"unrecognized plugin option(s): {' '.join(unknown)}" if unknown else ""


def _bad_names(namespace: argparse.Namespace) -> str:
    command = getattr(namespace, "command", "pytest")
    for (owner, dest), valid in NAMED_VALUES.items():
        value = getattr(namespace, dest, None)
        if owner != command or value is None:
            continue
        try:
            names.parse_names([value] if isinstance(value, str) else value, valid, dest)
        except ValueError as error:
            return str(error)
    return ""


def command_line_problems(
    documents: dict[str, str],
    cli: argparse.ArgumentParser,
    pytest_options: argparse.ArgumentParser,
) -> list[str]:
    """One line per documented command line that the real parsers refuse."""
    problems = []
    for page, text in documents.items():
        for number, line in shell_lines(text):
            for words in commands_of(line):
                program, args = program_of(words)
                if program == "mpbench":
                    error = parse_error(cli, args)
                elif program == "pytest":
                    error = parse_error(pytest_options, args, known=True)
                else:
                    continue
                if error:
                    problems.append(f"{page}:{number}: {' '.join(words)}: {error}")
    return problems


# --------------------------------------------------------------------------------------------
# Options told, with their defaults


def section(text: str, heading: str) -> str:
    """From the ``## heading`` line to the next ``##`` heading ('' when absent)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def mentions(text: str, option: str) -> list[str]:
    """The lines of ``text`` that name ``option`` (not a longer option it begins)."""
    pattern = re.compile(rf"{re.escape(option)}(?![\w-])")
    return [line for line in text.splitlines() if pattern.search(line)]


def default_words(action: argparse.Action, vocabulary: Sequence[str] = ()) -> list[list[str]]:
    """The ways a line can state ``action``'s default, each a list of words it must hold ([]
    when there is none to state: no default, or a flag). A default that is every valid name may
    also be told as ``all``."""
    default = action.default
    if default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return []
    items = default.split(",") if isinstance(default, str) else default
    items = [str(item) for item in (items if isinstance(items, list) else [items])]
    if len(items) > 1 and items == list(vocabulary or action.choices or ()):
        return [items, ["all"]]
    return [items]


def has_words(line: str, words: Sequence[str]) -> bool:
    return all(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", line) for word in words)


def states_default(lines: list[str], ways: list[list[str]]) -> bool:
    return not ways or any(has_words(line, words) for line in lines for words in ways)


def undocumented_options(
    cli: argparse.ArgumentParser, documents: dict[str, str], profiles: dict = PROFILES
) -> list[str]:
    """One line per ``mpbench`` option that its docs do not name, or name without its default."""
    problems = []
    for command, parser in subcommands(cli).items():
        page = COMMAND_PAGES.get(command)
        told = section(documents["docs/cli.md"], f"mpbench {command}")
        told += "\n" + documents.get(f"docs/{page}", "") if page else ""
        where = "docs/cli.md" + (f" or docs/{page}" if page else "")
        for action in options(parser):
            flag = max(action.option_strings, key=len)
            lines = mentions(told, flag)
            if not lines:
                problems.append(f"mpbench {command} {flag} is not documented in {where}")
                continue
            ways = default_words(action, NAMED_VALUES.get((command, action.dest), ()))
            field = PROFILE_DEFAULTS.get(action.dest) if command == "run" else None
            if field:
                ways = [[str(getattr(profile, field)) for profile in profiles.values()]]
            if not states_default(lines, ways):
                problems.append(
                    f"mpbench {command} {flag}: no line of {where} that names it gives its "
                    f"default {' '.join(ways[0])}"
                )
    return problems


def undocumented_plugin_options(pytest_options: argparse.ArgumentParser, text: str) -> list[str]:
    problems = []
    for action in options(pytest_options):
        flag = action.option_strings[0]
        lines = mentions(text, flag)
        ways = default_words(action, NAMED_VALUES.get(("pytest", action.dest), ()))
        if not lines:
            problems.append(f"pytest {flag} is not documented in docs/benchmarks.md")
        elif not states_default(lines, ways):
            problems.append(
                f"pytest {flag}: no line of docs/benchmarks.md that names it gives its default "
                f"{' '.join(ways[0])}"
            )
    return problems


# --------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return pages()


@pytest.fixture(scope="module")
def cli() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def pytest_options() -> argparse.ArgumentParser:
    return plugin_parser()


def test_the_docs_show_command_lines_of_both_kinds(documents: dict[str, str]) -> None:
    """The extraction finds what the other tests check (an empty harvest would pass them)."""
    found = {"mpbench": 0, "pytest": 0}
    for text in documents.values():
        for _, line in shell_lines(text):
            for words in commands_of(line):
                program, _ = program_of(words)
                if program:
                    found[program] += 1
    assert found["mpbench"] >= 30 and found["pytest"] >= 10, found


def test_every_documented_command_line_parses(
    documents: dict[str, str], cli: argparse.ArgumentParser, pytest_options: argparse.ArgumentParser
) -> None:
    problems = command_line_problems(documents, cli, pytest_options)
    assert not problems, "\n".join(problems)


def test_every_option_of_every_command_is_documented_with_its_default(
    documents: dict[str, str], cli: argparse.ArgumentParser
) -> None:
    problems = undocumented_options(cli, documents)
    assert not problems, "\n".join(problems)


def test_every_plugin_option_is_documented_with_its_default(
    documents: dict[str, str], pytest_options: argparse.ArgumentParser
) -> None:
    problems = undocumented_plugin_options(pytest_options, documents["docs/benchmarks.md"])
    assert not problems, "\n".join(problems)


def test_cli_md_names_every_command(
    documents: dict[str, str], cli: argparse.ArgumentParser
) -> None:
    intro = documents["docs/cli.md"].split("\n## ")[0]
    commands = subcommands(cli)
    missing = [name for name in commands if f"`{name}`" not in intro]
    assert not missing, f"docs/cli.md's introduction leaves out the command(s) {missing}"
    for word in re.findall(r"\b(\w+) commands\b", intro):
        counted = [n for n, w in NUMBER_WORDS.items() if w == word.lower()]
        assert not counted or counted == [len(commands)], f"docs/cli.md says {word} commands"
    for command in commands:
        assert section(documents["docs/cli.md"], f"mpbench {command}"), (
            f"docs/cli.md has no '## mpbench {command}' section"
        )


def table_column(text: str, header: str) -> list[str]:
    """The first column's code names of the markdown table whose header row starts ``header``."""
    match = re.search(rf"^\| {re.escape(header)} \|.*\n\|[-| ]+\n((?:\|.*\n)+)", text, re.M)
    assert match, f"no table with a '{header}' column"
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in match.group(1).splitlines()]


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md"])
def test_the_precision_tables_list_the_codes_precisions(
    documents: dict[str, str], page: str
) -> None:
    assert table_column(documents[page], "precision") == list(names.PRECISIONS)


def test_the_documented_bad_precision_message_is_the_codes(documents: dict[str, str]) -> None:
    with pytest.raises(ValueError) as error:
        names.parse_names(["float64"], names.PRECISIONS, "--precision")
    assert f"`{error.value}`" in documents["docs/failures.md"]


def test_run_precision_default_is_told(documents: dict[str, str]) -> None:
    """``--precision`` has no argparse default: ``mpbench run`` fills in DEFAULT_PRECISIONS."""
    lines = mentions(section(documents["docs/cli.md"], "mpbench run"), "--precision")
    wanted = [*names.DEFAULT_PRECISIONS, "default"]
    assert any(has_words(line, wanted) for line in lines), lines


@pytest.mark.parametrize(
    ("page", "heading"),
    [("docs/cli.md", "mpbench run"), ("docs/failures.md", "Exit status of `mpbench run`")],
)
def test_the_documented_exit_codes_are_the_codes(
    documents: dict[str, str], page: str, heading: str
) -> None:
    text = section(documents[page], heading)
    paragraph = re.search(r"^Exit status:?.*?(?:\n\n|\Z)", text, re.M | re.S)
    paragraph = paragraph.group(0) if paragraph else text
    told = {int(code) for code in re.findall(r"(?<![\w.-])(\d{1,3})(?=\s+[a-z(])", paragraph)}
    assert told == RUN_EXIT_CODES, f"{page} '{heading}': {sorted(told)}"


# --------------------------------------------------------------------------------------------
# The checkers fail where they should


def test_a_planted_wrong_option_in_a_code_block_is_reported(
    documents: dict[str, str], cli: argparse.ArgumentParser, pytest_options: argparse.ArgumentParser
) -> None:
    planted = dict(documents)
    planted["README.md"] += (
        "\n```bash\nmpbench run --epochs 2 --no-such-option\n"
        "mpbench run --xla fast  # a bad name\nmpbench profile small --xla off \\\n"
        "    --precision float32\n```\n```console\n$ pytest benchmarks/ --mp-batchsize=8\n"
        "$ pytest benchmarks/ --mp-precision=float64 -m 'not slow'\n```\n"
    )
    before = command_line_problems(documents, cli, pytest_options)
    problems = [p for p in command_line_problems(planted, cli, pytest_options) if p not in before]
    assert len(problems) == 5, problems
    assert "unrecognized arguments: --no-such-option" in problems[0]
    assert "unknown xla value 'fast'" in problems[1]
    assert "argument --precision: invalid choice: 'float32'" in problems[2]
    assert "unrecognized plugin option(s): --mp-batchsize" in problems[3]
    assert "unknown mp_precision value 'float64'" in problems[4]
    assert all(problem.startswith("README.md:") for problem in problems)


def test_a_planted_undocumented_option_is_reported(documents: dict[str, str]) -> None:
    cli = build_parser()
    subcommands(cli)["run"].add_argument("--planted-option", type=int)
    subcommands(cli)["doctor"].add_argument("--planted-level", type=int, default=7)
    subcommands(cli)["check"].add_argument(
        "--measure", action="store_true"
    )  # doctor's, not check's
    before = undocumented_options(build_parser(), documents)
    problems = [p for p in undocumented_options(cli, documents) if p not in before]
    assert problems == [
        "mpbench run --planted-option is not documented in docs/cli.md or docs/scaling-out.md",
        "mpbench doctor --planted-level is not documented in docs/cli.md",
        "mpbench check --measure is not documented in docs/cli.md or docs/check.md",
    ]


def test_a_wrong_default_is_reported(
    documents: dict[str, str], cli: argparse.ArgumentParser
) -> None:
    planted = dict(documents)
    planted["docs/cli.md"] = planted["docs/cli.md"].replace(
        "[--batch-size 8] [--dtype", "[--batch-size 9] [--dtype"
    )
    before = undocumented_options(cli, documents)
    problems = [p for p in undocumented_options(cli, planted) if p not in before]
    assert problems == [
        "mpbench numerics --batch-size: no line of docs/cli.md that names it gives its default 8"
    ]


def test_an_undocumented_plugin_option_is_reported(documents: dict[str, str]) -> None:
    parser = plugin_parser()
    parser.add_argument("--mp-planted", type=int)
    before = undocumented_plugin_options(plugin_parser(), documents["docs/benchmarks.md"])
    problems = undocumented_plugin_options(parser, documents["docs/benchmarks.md"])
    new = [p for p in problems if p not in before]
    assert new == ["pytest --mp-planted is not documented in docs/benchmarks.md"]


def drawn_modules(text: str) -> set[str]:
    """The ``mpcore`` modules the layout drawing of docs/architecture.md names, one a line
    (``    name.py`` under ``  package/``; a line naming several is not counted)."""
    block = text.split("```\nmpcore/\n", 1)[1].split("```", 1)[0]
    drawn, package = set(), ""
    for line in block.splitlines():
        folder = re.match(r"  (\w+)/", line)
        if folder:
            package = folder.group(1) + "/"
        elif not line.startswith(" "):
            break  # the folders beside mpcore/
        module = re.match(r"( +)(\w+\.py) ", line)
        if module:
            drawn.add(f"mpcore/{package if len(module.group(1)) > 2 else ''}{module.group(2)}")
    return drawn


def test_the_layout_drawing_names_every_module(documents: dict[str, str]) -> None:
    package = ROOT / "mpcore"
    modules = {
        str(path.relative_to(ROOT))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent in (package, package / "report")
    }
    drawn = drawn_modules(documents["docs/architecture.md"])
    assert not modules - drawn, f"docs/architecture.md does not draw {sorted(modules - drawn)}"
    assert not drawn - modules, (
        f"docs/architecture.md draws modules that are gone: {sorted(drawn - modules)}"
    )


def test_a_module_missing_from_the_drawing_is_reported(documents: dict[str, str]) -> None:
    text = documents["docs/architecture.md"]
    lines = [line for line in text.splitlines() if not line.startswith("    plots.py ")]
    drawn = drawn_modules("\n".join(lines))
    assert drawn_modules(text) - drawn == {"mpcore/face/plots.py"}


def top_level_names(path: Path) -> set[str]:
    """What a module defines or imports at its top level, read from the source (ast)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return found


def stale_references(text: str) -> list[str]:
    """``mpcore.a.b`` names and ``mpcore/a/b.py`` paths in ``text`` that name no module, or no
    name of the module (the public API's lazy names count)."""
    stale = []
    for dotted in sorted(set(re.findall(r"\bmpcore(?:\.\w+)+", text))):
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            base = ROOT.joinpath(*parts[:k])
            source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if source.exists():
                names = top_level_names(source) | set(mpcore.__all__ if k == 1 else ())
                if parts[k:] and parts[k] not in names:
                    stale.append(dotted)
                break
        else:
            stale.append(dotted)
    paths = set(re.findall(r"\bmpcore/[\w/]*\w(?:\.py)?", text))
    return stale + sorted(path for path in paths if not (ROOT / path).exists())


def test_the_docs_name_only_modules_and_names_that_exist(documents: dict[str, str]) -> None:
    stale = {}
    for page, text in documents.items():
        if page == "docs/architecture.md":  # its table of moves names the old modules on purpose
            text = text.split("\n## Where things moved")[0]
        stale.update({f"{page}: {name}": None for name in stale_references(text)})
    assert not stale, "\n".join(stale)


def test_a_stale_module_reference_is_reported() -> None:
    text = "`mpcore.training.train`, `mpcore/devices.py`, `mpcore.report.nothing`, `mpcore.train`"
    assert stale_references(text) == [
        "mpcore.report.nothing",
        "mpcore.training.train",
        "mpcore/devices.py",
    ]
