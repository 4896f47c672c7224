"""The WebSocket endpoint alone, at ``ws`` under wherever this is included.

The route is an HTTP URL of the site's URLconf, so ``reverse("executions-websocket")`` knows
where it is mounted; the ASGI application routes WebSocket handshakes by it (see
executions.routing), and a plain HTTP request to it is told to upgrade.
"""

from django.urls import path

from executions.routing import websocket_endpoint

urlpatterns = [path("ws", websocket_endpoint, name="executions-websocket")]
