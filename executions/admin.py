from django.contrib import admin

from executions.models import Graph


@admin.register(Graph)
class GraphAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "created_at"]
    search_fields = ["id", "name", "owner__username"]
    raw_id_fields = ["owner"]
