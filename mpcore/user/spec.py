"""What :mod:`mpcore.user.loader` and :mod:`mpcore.user.data` share about the user's specs: the
one-line :class:`LoadError`, ``package.module:attribute`` specs, and running the user's code."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``package.module:attribute`` (the attribute may be dotted, e.g. ``Class.method``).
_SPEC = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


class LoadError(ValueError):
    """A model or data spec that cannot be used; the message is one line naming it."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def is_python_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:attribute`` rather than a path."""
    return bool(_SPEC.match(spec)) and not Path(spec).exists()


def resolve_attribute(spec: str) -> Any:
    """Import ``package.module`` and return its (possibly dotted) attribute."""
    match = _SPEC.match(spec)
    if not match:
        raise LoadError(f"{spec}: not a package.module:attribute spec")
    module_name, attribute = match.groups()
    try:
        with users_code(spec, f"importing {module_name}"):
            target: Any = importlib.import_module(module_name)
    except LoadError:
        raise
    except Exception as error:  # anything the user's module raises while importing
        raise LoadError(f"{spec}: cannot import {module_name} ({first_line(error)})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(f"{spec}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


@contextlib.contextmanager
def users_code(spec: str, doing: str) -> Any:
    """Run the user's code (a module import, a factory, a data function): what it prints goes to
    stderr (a ``--json`` report on stdout stays JSON), and a ``sys.exit()`` in it is a
    :class:`LoadError` naming ``spec`` instead of ending the command with no message."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as stop:
        raise LoadError(
            f"{spec}: called sys.exit({stop.code!r}) while {doing}; a factory must return a model"
        ) from None


def accepted_keywords(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return {}
    return {name: value for name, value in offered.items() if name in parameters}
