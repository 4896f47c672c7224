"""The HTTP API alone: ``path("api/", include("executions.urls.api"))``.

The Server-Sent Events stream (executions.sse) comes first: ``graphs/<id>/events`` must end in
``/events``, and the history (``graphs/<id>/executions``) in ``/executions``, so a graph id may
hold ``/`` (even ``/events``) without one route taking the other's requests.
"""

from django.urls import path

from executions.api import api
from executions.sse import execution_events, graph_events

urlpatterns = [
    path("graphs/<path:graph_id>/events", graph_events, name="executions-graph-events"),
    path(
        "executions/<path:graph_exec_id>/events",
        execution_events,
        name="executions-execution-events",
    ),
    path("", api.urls),
]
