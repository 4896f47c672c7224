"""Operations endpoints: ``path("", include("executions.urls.ops"))`` serves ``healthz``,
``readyz`` and ``metrics``. Keep them from the public internet (see the README)."""

from django.urls import path

from executions.health import healthz, readyz
from executions.metrics import metrics_view

urlpatterns = [
    path("healthz", healthz, name="executions-healthz"),
    path("readyz", readyz, name="executions-readyz"),
    path("metrics", metrics_view, name="executions-metrics"),
]
