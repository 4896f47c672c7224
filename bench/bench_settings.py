"""Django settings of the benchmark's servers: the project's own, with connection limits raised.

Only the subscribe policy's owner may follow a graph, so the benchmark connects all its
WebSockets as one user: up to 2,000 of them, and 1,000 on one graph in scenario (a), past the
app's per-user and per-process connection limits. Everything else is the project's settings,
configured from the environment as always. The runner sets DJANGO_SETTINGS_MODULE to this module
and puts bench/ on PYTHONPATH.
"""

from project.settings import *  # noqa: F403

EXECUTIONS_MAX_CONNECTIONS_PER_USER = 100_000
EXECUTIONS_MAX_CONNECTIONS = 100_000
