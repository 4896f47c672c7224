"""One function maps any graph id to a channels group name: always valid, never shared."""

import re

from hypothesis import given
from hypothesis import strategies as st

from executions.groups import graph_group_name

CHANNELS_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")
graph_ids = st.text(min_size=1, max_size=255)


@given(graph_ids)
def test_every_graph_id_maps_to_a_valid_group_name(graph_id: str) -> None:
    name = graph_group_name(graph_id)
    assert CHANNELS_GROUP_NAME.match(name)
    assert len(name) < 100


@given(graph_ids, graph_ids)
def test_different_graph_ids_never_share_a_group(first: str, second: str) -> None:
    if first != second:
        assert graph_group_name(first) != graph_group_name(second)


@given(st.from_regex(r"[A-Za-z0-9_\-]{1,64}", fullmatch=True))
def test_readable_ids_never_meet_hashed_ones(graph_id: str) -> None:
    hashed_lookalike = graph_group_name(graph_id + " ")
    assert graph_group_name(graph_id) == f"graph.{graph_id}"
    assert graph_group_name(graph_id) != hashed_lookalike


def test_unusual_ids_map_to_distinct_names() -> None:
    unusual = ["a b", "a/b", "a|b", "a#b", "ü", "图", "x" * 255, "graph.h.1", "a.b", "-", "_"]
    names = {graph_group_name(graph_id) for graph_id in unusual}
    assert len(names) == len(unusual)
    assert all(CHANNELS_GROUP_NAME.match(name) and len(name) < 100 for name in names)


def test_the_channels_library_accepts_the_names() -> None:
    from channels.layers import BaseChannelLayer

    layer = BaseChannelLayer()
    for graph_id in ["plain", "with space", "x" * 255, "\U0001f600", "a" * 64, "a" * 65]:
        assert layer.require_valid_group_name(graph_group_name(graph_id))
