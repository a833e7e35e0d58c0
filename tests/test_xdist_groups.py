"""``pytest -n N`` (pytest-xdist) keeps the tests that share an expensive fixture in one worker
(conftest.py ``group_by_shared_fixture``, tests/conftest.py for the session scenarios); the others
are spread test by test. The markers are what ``--dist loadgroup`` schedules by."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def shared_by_the_module() -> object:
    return object()


@pytest.fixture
def per_test() -> object:
    return object()


def test_a_test_reading_a_module_fixture_is_grouped_with_its_module(
    request: pytest.FixtureRequest, shared_by_the_module: object
) -> None:
    marker = request.node.get_closest_marker("xdist_group")
    assert marker is not None
    assert marker.args == (request.node.nodeid.split("::")[0],)


def test_a_test_with_only_its_own_fixtures_is_spread_freely(
    request: pytest.FixtureRequest, per_test: object
) -> None:
    assert request.node.get_closest_marker("xdist_group") is None


def root_conftest(pytestconfig: pytest.Config):
    root = pytestconfig.rootpath / "conftest.py"
    for plugin in pytestconfig.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__) == root:
            return plugin
    pytest.fail(f"the root conftest {root} is not loaded")


@pytest.mark.parametrize(
    ("numprocesses", "dist", "expected"),
    [(2, "load", "loadgroup"), (None, "no", "no"), (2, "loadfile", "loadfile")],
)
def test_pytest_n_schedules_by_group_and_only_under_n(
    pytestconfig: pytest.Config, numprocesses, dist: str, expected: str
) -> None:
    """``-n`` alone (which xdist turns into ``--dist load``) becomes ``loadgroup``; without
    ``-n`` nothing changes (a ``--dist`` would make pytest-benchmark disable every benchmark),
    and a ``--dist`` the user chose is kept."""
    config = SimpleNamespace(option=SimpleNamespace(numprocesses=numprocesses, dist=dist))
    root_conftest(pytestconfig).pytest_configure(config)
    assert config.option.dist == expected
