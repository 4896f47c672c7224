from django.urls import path

from executions.api import api
from executions.health import healthz, readyz
from executions.metrics import metrics_view
from executions.views import index

urlpatterns = [
    path("", index, name="executions-index"),
    path("api/", api.urls),
    path("healthz", healthz, name="executions-healthz"),
    path("readyz", readyz, name="executions-readyz"),
    path("metrics", metrics_view, name="executions-metrics"),
]
