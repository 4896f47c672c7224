"""What differs between the Django versions the app supports (5.2 LTS, 6.0 and 6.1)."""

from collections.abc import Callable

import django

# ``django.tasks``, Django's background tasks, is new in Django 6.0.
HAS_DJANGO_TASKS = django.VERSION >= (6, 0)


def tasks_need_django_6(module: str, instead: str, *names: str) -> Callable[[str], object]:
    """A ``__getattr__`` for a module of tasks on Django 5.2, where it can define none.

    The module still imports (task runners that import every installed app's ``tasks`` module,
    as Celery's autodiscovery does, keep working); importing one of its tasks raises an
    ImportError that says why and what to use `instead`. Other names are the usual
    AttributeError.
    """
    task_names = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in task_names:
            raise ImportError(
                f"{module}.{name} is a django.tasks task, and django.tasks is new in Django 6.0 "
                f"(this is Django {django.get_version()}). Instead, {instead}",
                name=module,
            )
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
