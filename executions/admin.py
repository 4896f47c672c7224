from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from executions.models import ExecutionEvent, Graph


@admin.register(Graph)
class GraphAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "created_at"]
    search_fields = ["id", "name", "owner__username"]
    raw_id_fields = ["owner"]


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(admin.ModelAdmin):
    """The stored history, read-only: events are written by publishing, removed by retention."""

    list_display = ["graph_id", "seq", "graph_exec_id", "node_id", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["=graph_id", "=graph_exec_id", "=node_id"]
    ordering = ["graph_id", "-seq"]
    readonly_fields = [field.name for field in ExecutionEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
