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


class GraphStream(models.Model):
    """The head of a graph's event sequence: the last sequence number handed out.

    Publishers reserve numbers by updating this row, which serializes them per graph until
    their transaction commits, so committed numbers are dense and unique.
    """

    graph_id = models.CharField(primary_key=True, max_length=MAX_GRAPH_ID_LENGTH)
    head = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.graph_id} @ {self.head}"


class ExecutionEvent(models.Model):
    """One published execution result, numbered within its graph, kept for replay."""

    graph_id = models.CharField(max_length=MAX_GRAPH_ID_LENGTH)
    seq = models.BigIntegerField()
    graph_exec_id = models.TextField()
    node_id = models.TextField()
    status = models.CharField(max_length=16)
    # The frame exactly as live subscribers received it, so a replay is byte-identical.
    frame = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["graph_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["graph_id", "seq"], name="execution_event_graph_seq"),
        ]
        indexes = [
            # Latest result per node of one execution (the snapshot on subscribe).
            models.Index(
                fields=["graph_id", "graph_exec_id", "node_id", "seq"],
                name="execution_event_node_latest",
            ),
            # Retention by age.
            models.Index(fields=["created_at"], name="execution_event_created"),
        ]

    def __str__(self) -> str:
        return f"{self.graph_id} #{self.seq} {self.node_id} {self.status}"
