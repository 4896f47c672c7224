"""A host site that mounts the app under /live/ and its operations endpoints under /ops/."""

from django.urls import include, path

urlpatterns = [
    path("live/", include("executions.urls")),
    path("ops/", include("executions.urls.ops")),
]
