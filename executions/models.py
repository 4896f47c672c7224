from django.conf import settings
from django.db import models

from executions.schemas import MAX_GRAPH_ID_LENGTH


class Graph(models.Model):
    """A workflow graph whose executions its owner may watch."""

    id = models.CharField(primary_key=True, max_length=MAX_GRAPH_ID_LENGTH)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="execution_graphs"
    )
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or self.id
