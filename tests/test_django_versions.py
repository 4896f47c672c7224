"""What the app does differently on the Django versions it supports (5.2 LTS, 6.0 and 6.1).

The modules of ``django.tasks`` tasks import on every version (task runners import every
installed app's ``tasks`` module); on Django 5.2, which has no ``django.tasks``, importing a task
from them says why it cannot be had and what to use instead. The tasks themselves are tested
where they work, on Django 6.0 and newer (tests/test_history.py, tests/test_demo.py).
"""

import importlib

import django
import pytest

TASK_MODULES = [
    ("executions.tasks", "prune_execution_history", "manage.py prune_execution_history"),
    ("executions.demo_tasks", "run_demo_graph_task", "executions.demo.run_demo_graph_sync"),
]


@pytest.mark.parametrize(("module", "task", "instead"), TASK_MODULES)
def test_the_task_modules_import_on_every_version(module: str, task: str, instead: str) -> None:
    assert importlib.import_module(module).__name__ == module


@pytest.mark.skipif(
    django.VERSION >= (6, 0),
    reason=f"Django {django.get_version()} has django.tasks: the tasks themselves are tested",
)
@pytest.mark.parametrize(("module", "task", "instead"), TASK_MODULES)
def test_without_django_tasks_importing_a_task_says_why_and_what_instead(
    module: str, task: str, instead: str
) -> None:
    tasks = importlib.import_module(module)

    with pytest.raises(ImportError, match=r"django\.tasks is new in Django 6\.0") as raised:
        getattr(tasks, task)
    assert instead in str(raised.value)
    assert not hasattr(tasks, "anything_else")
