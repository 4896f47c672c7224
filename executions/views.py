from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """Say what is running here and how to connect to it."""
    ws_scheme = "wss" if request.is_secure() else "ws"
    return render(
        request,
        "executions/index.html",
        {"websocket_url": f"{ws_scheme}://{request.get_host()}/ws"},
    )
