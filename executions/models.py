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
    """One published event, numbered within its graph, kept for replay.

    A graph's stream holds node results (kind "result", or "node" when published as AutoGPT's
    node execution event, with its user_id) and AutoGPT's graph execution events ("graph",
    node_id empty). Each subscription shows its part of the stream (executions.channels).
    """

    graph_id = models.CharField(max_length=MAX_GRAPH_ID_LENGTH)
    seq = models.BigIntegerField()
    graph_exec_id = models.TextField()
    node_id = models.TextField()
    status = models.CharField(max_length=16)
    kind = models.CharField(max_length=8, default="result")
    user_id = models.TextField(blank=True, default="")
    # The frame exactly as live subscribers received it, so a replay is byte-identical: the
    # original protocol's for node results, AutoGPT's (channel null) for graph events.
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
            # The graph an execution belongs to (subscribe_graph_execution).
            models.Index(fields=["graph_exec_id", "seq"], name="execution_event_exec"),
            # Retention by age.
            models.Index(fields=["created_at"], name="execution_event_created"),
        ]

    def __str__(self) -> str:
        return f"{self.graph_id} #{self.seq} {self.node_id} {self.status}"
