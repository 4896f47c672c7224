from django.urls import path

from executions.api import api
from executions.health import healthz, readyz
from executions.metrics import metrics_view
from executions.views import LoginView, LogoutView, dashboard_asset, index, run_demo

urlpatterns = [
    path("", index, name="executions-index"),
    path("dashboard/assets/<str:name>", dashboard_asset, name="executions-dashboard-asset"),
    path("demo/run", run_demo, name="executions-demo-run"),
    path("login/", LoginView.as_view(), name="executions-login"),
    path("logout/", LogoutView.as_view(), name="executions-logout"),
    path("api/", api.urls),
    path("healthz", healthz, name="executions-healthz"),
    path("readyz", readyz, name="executions-readyz"),
    path("metrics", metrics_view, name="executions-metrics"),
]
