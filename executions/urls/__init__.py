"""The app's default URLs: the dashboard, login and logout, the API and the WebSocket endpoint.

Mount them under any prefix; every link, the dashboard's WebSocket URL and the ingest fast path
follow it::

    path("live/", include("executions.urls"))  # /live/, /live/api/..., ws://HOST/live/ws

The parts can be mounted on their own: ``executions.urls.api`` (the HTTP API alone),
``executions.urls.websocket`` (the WebSocket endpoint alone) and ``executions.urls.ops``
(``healthz``, ``readyz`` and ``metrics``, which the default include leaves out).
"""

from django.urls import include, path

from executions.views import LoginView, LogoutView, dashboard_asset, index, run_demo

urlpatterns = [
    path("", index, name="executions-index"),
    path("dashboard/assets/<str:name>", dashboard_asset, name="executions-dashboard-asset"),
    path("demo/run", run_demo, name="executions-demo-run"),
    path("login/", LoginView.as_view(), name="executions-login"),
    path("logout/", LogoutView.as_view(), name="executions-logout"),
    path("api/", include("executions.urls.api")),
    path("", include("executions.urls.websocket")),
]
