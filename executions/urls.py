from django.urls import path

from executions.api import api
from executions.views import index

urlpatterns = [
    path("", index, name="executions-index"),
    path("api/", api.urls),
]
