"""``import executions``: the names a project may rely on, loaded without loading models."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import executions
import executions.events
import executions.exceptions
import executions.schemas

PUBLIC_NAMES = [
    "ExecutionResult",
    "ExecutionStatus",
    "GraphExecutionEvent",
    "NodeExecutionEvent",
    "PublishNotDelivered",
    "__version__",
    "send_execution_result",
    "send_execution_result_sync",
    "send_execution_results",
    "send_execution_results_sync",
    "send_graph_execution_event",
    "send_graph_execution_event_sync",
    "send_node_execution_event",
    "send_node_execution_event_sync",
]


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(executions.__all__) == PUBLIC_NAMES


def test_each_public_name_is_the_object_its_module_defines() -> None:
    assert executions.send_execution_result is executions.events.send_execution_result
    assert executions.send_execution_result_sync is executions.events.send_execution_result_sync
    assert executions.send_execution_results is executions.events.send_execution_results
    assert executions.send_execution_results_sync is executions.events.send_execution_results_sync
    assert executions.ExecutionResult is executions.schemas.ExecutionResult
    assert executions.ExecutionStatus is executions.schemas.ExecutionStatus
    assert executions.PublishNotDelivered is executions.exceptions.PublishNotDelivered


def test_the_version_is_the_packages_version() -> None:
    from importlib.metadata import version

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    # One place for the version: the package's, which the build reads (and the wheel's test,
    # test_host_project.py, compares with the built wheel).
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "executions.__version__"
    }
    assert version("django-executions") == executions.__version__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="send_everything"):
        executions.send_everything  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_loads_no_models_and_reads_no_settings() -> None:
    # A fresh interpreter with no settings at all: INSTALLED_APPS imports the package this early.
    probe = (
        "import sys, executions; "
        "loaded = sorted(m for m in sys.modules if m.startswith(('executions.', 'django.db')));"
        "print(loaded)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert completed.stdout.strip() == "[]"
