"""The stored history: numbering, the HTTP endpoint, retention, and the admin."""

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from executions import history
from executions.events import send_execution_results_sync
from executions.models import ExecutionEvent
from executions.tokens import mint_token
from tests.conftest import make_result
from tests.support import needs_django_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def publish(count: int, graph_id: str = "test_graph") -> list[int]:
    return send_execution_results_sync(
        make_result(graph_id=graph_id, node_exec_id=str(n)) for n in range(count)
    )


def test_numbers_start_at_one_and_grow_by_one_per_graph(alice: Any) -> None:
    assert publish(3) == [1, 2, 3]
    assert publish(2, graph_id="graph-2") == [1, 2]
    assert publish(1) == [4]


def test_a_batch_for_several_graphs_numbers_each_graph_apart(alice: Any) -> None:
    numbers = send_execution_results_sync(
        [make_result(graph_id="b"), make_result(graph_id="a"), make_result(graph_id="b")]
    )
    assert numbers == [1, 1, 2]
    assert history.position("b").head == 2
    assert history.position("a").head == 1


def test_the_stored_frame_is_the_frame_subscribers_received(alice: Any) -> None:
    from executions.schemas import execution_event_frame

    result = make_result(node_exec_id="x")
    send_execution_results_sync([result])

    (stored,) = history.events_after("test_graph", 0, 10)
    assert stored.frame == execution_event_frame(result)


def stored_rows(graph_id: str) -> list[tuple[Any, ...]]:
    columns = ("seq", "graph_exec_id", "node_id", "status", "kind", "user_id", "frame")
    return list(
        ExecutionEvent.objects.filter(graph_id=graph_id).order_by("seq").values_list(*columns)
    )


def test_a_large_batch_stores_the_same_rows_as_a_small_one(alice: Any, monkeypatch: Any) -> None:
    # On PostgreSQL a batch of COPY_FROM_ROWS or more is streamed with COPY, fewer inserted
    # row by row: both must store the same thing (on SQLite both go row by row). The ids hold
    # what COPY's text format escapes: tab, newline, backslash.
    count = history.COPY_FROM_ROWS

    results = [
        make_result(node_exec_id=f"n{n}", node_id=f"node-é\t\n\\N-{n}") for n in range(count)
    ]

    def batch(graph_id: str) -> list[Any]:
        return [result.model_copy(update={"graph_id": graph_id}) for result in results]

    send_execution_results_sync(batch("streamed"))
    monkeypatch.setattr(history, "COPY_FROM_ROWS", count + 1)
    send_execution_results_sync(batch("row-by-row"))

    streamed, row_by_row = stored_rows("streamed"), stored_rows("row-by-row")
    assert len(streamed) == count
    assert streamed[0][2] == "node-é\t\n\\N-0"
    assert [row[:-1] for row in streamed] == [row[:-1] for row in row_by_row]
    assert [row[-1].replace('"streamed"', '"row-by-row"') for row in streamed] == [
        row[-1] for row in row_by_row
    ]


@pytest.fixture
def browser(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_history_pages_through_events_in_order(browser: Client) -> None:
    publish(7)

    first = browser.get("/api/graphs/test_graph/executions", {"since": 0, "limit": 3}).json()
    second = browser.get(
        "/api/graphs/test_graph/executions", {"since": first["next_since"], "limit": 3}
    ).json()
    last = browser.get(
        "/api/graphs/test_graph/executions", {"since": second["next_since"], "limit": 3}
    ).json()

    assert [event["seq"] for event in first["events"]] == [1, 2, 3]
    assert [event["seq"] for event in second["events"]] == [4, 5, 6]
    assert [event["seq"] for event in last["events"]] == [7]
    assert last["next_since"] == 7
    assert first["events"][0]["result"]["node_exec_id"] == "0"
    assert first | {"events": None} == {
        "graph_id": "test_graph",
        "head": 7,
        "oldest": 1,
        "truncated": False,
        "next_since": 3,
        "events": None,
    }


def test_history_past_the_head_is_an_empty_page(browser: Client) -> None:
    publish(2)
    page = browser.get("/api/graphs/test_graph/executions", {"since": 2}).json()
    assert page["events"] == []
    assert page["next_since"] == 2


def test_history_reports_truncation(browser: Client) -> None:
    publish(10)
    history.prune(max_events=3, max_age=None)

    page = browser.get("/api/graphs/test_graph/executions", {"since": 0}).json()

    assert page["truncated"] is True
    assert page["oldest"] == 8
    assert [event["seq"] for event in page["events"]] == [8, 9, 10]


def test_history_accepts_a_user_token(alice: Any) -> None:
    publish(1)
    token = mint_token(alice).token

    response = Client().get(
        "/api/graphs/test_graph/executions", headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200
    assert len(response.json()["events"]) == 1


def test_history_of_an_id_with_slashes_and_spaces(alice: Any, make_user: Any) -> None:
    carol = make_user("carol", graphs=("team a/pipeline #1",))
    send_execution_results_sync([make_result(graph_id="team a/pipeline #1")])
    client = Client()
    client.force_login(carol)

    response = client.get("/api/graphs/team%20a/pipeline%20%231/executions")

    assert response.status_code == 200
    assert response.json()["graph_id"] == "team a/pipeline #1"
    assert response.json()["head"] == 1


def test_another_users_graph_is_refused_like_a_missing_one(browser: Client, make_user: Any) -> None:
    make_user("bob", graphs=("bobs-graph",))
    publish(1, graph_id="bobs-graph")

    someone_elses = browser.get("/api/graphs/bobs-graph/executions")
    missing = browser.get("/api/graphs/no-such-graph/executions")

    assert someone_elses.status_code == missing.status_code == 403
    assert someone_elses.json() == missing.json() == {"error": "Not allowed to read this graph."}


def test_history_needs_authentication(alice: Any) -> None:
    assert Client().get("/api/graphs/test_graph/executions").status_code == 401
    response = Client().get(
        "/api/graphs/test_graph/executions", headers={"Authorization": "Bearer forged"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize("query", [{"since": -1}, {"limit": 0}, {"limit": 1001}, {"since": "x"}])
def test_bad_paging_parameters_are_a_400(browser: Client, query: dict[str, Any]) -> None:
    response = browser.get("/api/graphs/test_graph/executions", query)
    assert response.status_code == 400
    assert "error" in response.json()


def test_retention_keeps_the_last_events_of_each_graph(alice: Any) -> None:
    publish(10)
    publish(3, graph_id="graph-2")

    report = history.prune(max_events=4, max_age=None)

    assert report.deleted == 6
    assert history.position("test_graph") == history.StreamPosition(head=10, oldest=7)
    assert history.position("graph-2") == history.StreamPosition(head=3, oldest=1)


def test_retention_by_age_removes_only_the_oldest_prefix(alice: Any) -> None:
    publish(6)
    long_ago = timezone.now() - timedelta(days=40)
    ExecutionEvent.objects.filter(seq__in=[1, 2, 4]).update(created_at=long_ago)

    history.prune(max_events=None, max_age=timedelta(days=30))

    # Event 3 is recent but older in sequence than an expired one: history stays contiguous.
    assert history.position("test_graph") == history.StreamPosition(head=6, oldest=5)


def test_numbering_goes_on_after_everything_was_pruned(alice: Any) -> None:
    publish(3)
    history.prune(max_events=0, max_age=None)
    assert history.position("test_graph") == history.StreamPosition(head=3, oldest=4)
    assert publish(1) == [4]


def test_the_prune_command_applies_the_configured_retention(alice: Any, settings: Any) -> None:
    settings.EXECUTIONS_HISTORY_MAX_EVENTS = 2
    publish(5)
    out = StringIO()

    call_command("prune_execution_history", stdout=out)

    assert "Pruned 3 event(s)" in out.getvalue()
    assert history.position("test_graph").oldest == 4


@needs_django_tasks
def test_the_prune_task_runs_through_django_tasks(alice: Any, settings: Any) -> None:
    from executions.tasks import prune_execution_history

    settings.EXECUTIONS_HISTORY_MAX_EVENTS = 1
    publish(3)

    outcome = prune_execution_history.enqueue()

    assert outcome.return_value == {"graphs": 1, "deleted": 2}


def test_staff_read_the_history_in_the_admin(alice: Any, make_user: Any) -> None:
    publish(2)
    staff = make_user("staff")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    client = Client()
    client.force_login(staff)

    page = client.get("/admin/executions/executionevent/")

    assert page.status_code == 200
    assert b"test_graph" in page.content
    assert client.get("/admin/executions/executionevent/add/").status_code == 403


def test_people_who_are_not_staff_cannot_read_the_admin(browser: Client) -> None:
    response = browser.get("/admin/executions/executionevent/")
    assert response.status_code == 302
