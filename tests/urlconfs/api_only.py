"""A host site that serves the app's HTTP API alone, under /svc/, and no dashboard."""

from django.urls import include, path

urlpatterns = [path("svc/", include("executions.urls.api"))]
