"""The HTTP API alone: ``path("api/", include("executions.urls.api"))``."""

from django.urls import path

from executions.api import api

urlpatterns = [path("", api.urls)]
