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


def loaded_conftest(pytestconfig: pytest.Config, path: Path):
    """The conftest module pytest loaded from ``path`` (two are named ``conftest``)."""
    for plugin in pytestconfig.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__) == path:
            return plugin
    pytest.fail(f"the conftest {path} is not loaded")


def root_conftest(pytestconfig: pytest.Config):
    return loaded_conftest(pytestconfig, pytestconfig.rootpath / "conftest.py")


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


def test_a_worker_names_grouped_tests_after_their_group(request: pytest.FixtureRequest) -> None:
    """Under ``-n`` the worker must append the group to the test's id (``...@group``), which is
    what the controller schedules by: without it a scenario's readers are spread over workers and
    each worker runs the scenario again. Outside ``-n`` there is nothing to check."""
    if not getattr(request.config, "workerinput", None):
        pytest.skip("not under pytest -n: no worker, no groups to schedule")
    assert request.config.getvalue("loadgroup") is True


def test_a_grouped_test_carries_its_group_in_its_id_under_n(
    request: pytest.FixtureRequest, shared_by_the_module: object
) -> None:
    if not getattr(request.config, "workerinput", None):
        pytest.skip("not under pytest -n: test ids carry no group")
    assert request.node.nodeid.endswith("@" + request.node.nodeid.split("::")[0])


def test_scenarios_read_together_share_one_group_transitively(pytestconfig: pytest.Config) -> None:
    tests_conftest = loaded_conftest(pytestconfig, Path(__file__).with_name("conftest.py"))
    scenario_groups = tests_conftest.scenario_groups
    groups = scenario_groups([frozenset({"a"}), frozenset({"b", "c"}), frozenset({"c", "d"})])
    assert groups == {"a": "a", "b": "b+c+d", "c": "b+c+d", "d": "b+c+d"}
    assert scenario_groups([frozenset({"quick_run"})]) == {"quick_run": "quick_run"}
