from django.urls import path

from executions.consumers import ExecutionStreamConsumer

websocket_urlpatterns = [
    path("ws", ExecutionStreamConsumer.as_asgi()),
]
