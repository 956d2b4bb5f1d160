"""The constraint mask reuses parts built since the last write; it must always equal a mask built afresh."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.domain.models import (
    AgentKind,
    AgentStatus,
    Capability,
    CatalogEntry,
    DiscoverFilters,
    Visibility,
)
from registry.index.columns import AttributeColumns, constraint_mask

ROWS = 12
NOW = 1_000.0
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")

entries = st.builds(
    lambda tenant, kind, status, visibility, shared, regions, lease: CatalogEntry(
        capability=Capability(name="c", version="1.0.0", regions=tuple(regions)),
        agent_id="a",
        agent_name="a",
        tenant=tenant,
        kind=kind,
        endpoint="",
        labels={},
        status=status,
        visibility=visibility,
        shared_with=(("b",) if shared and visibility is Visibility.SHARED else ()),
        lease_expires_at=lease,
    ),
    st.sampled_from(["a", "b"]),
    st.sampled_from(list(AgentKind)),
    st.sampled_from(list(AgentStatus)),
    st.sampled_from(list(Visibility)),
    st.booleans(),
    st.lists(st.sampled_from(REGIONS), max_size=2, unique=True),
    st.sampled_from([float("inf"), NOW - 5, NOW + 5]),
)
filters = st.builds(
    lambda kinds, regions: DiscoverFilters(kinds=tuple(kinds), regions=tuple(regions)),
    st.lists(st.sampled_from(list(AgentKind)), max_size=2, unique=True),
    st.lists(st.sampled_from(REGIONS), max_size=2, unique=True),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, ROWS - 1), entries),
        st.tuples(st.just("clear"), st.integers(0, ROWS - 1), st.none()),
        st.tuples(st.just("query"), st.tuples(st.sampled_from(["a", "b"]), st.integers(1, ROWS)), filters),
        st.tuples(st.just("grow"), st.integers(1, 8), st.none()),
    ),
    max_size=40,
)


def allowed(entry: CatalogEntry, tenant: str, filters: DiscoverFilters) -> bool:
    """The rules, written out plainly: the reference the masks are checked against."""
    visible = (
        entry.tenant == tenant
        or entry.visibility is Visibility.PUBLIC
        or (entry.visibility is Visibility.SHARED and tenant in entry.shared_with)
    )
    regions = entry.capability.regions
    return (
        visible
        and entry.status is AgentStatus.ACTIVE
        and entry.lease_expires_at > NOW
        and (not filters.kinds or entry.kind in filters.kinds)
        and (not filters.regions or not regions or bool(set(regions) & set(filters.regions)))
    )


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_the_cached_mask_equals_one_built_afresh_after_any_writes(steps: list[tuple[str, object, object]]) -> None:
    columns = AttributeColumns(ROWS)
    rows: dict[int, CatalogEntry] = {}
    for op, key, value in steps:
        if op == "set":
            assert isinstance(key, int) and isinstance(value, CatalogEntry)
            columns.set_row(key, value)
            rows[key] = value
        elif op == "clear":
            assert isinstance(key, int)
            columns.clear_row(key)
            rows.pop(key, None)
        elif op == "grow":
            assert isinstance(key, int)
            columns.grow(columns.capacity + key)
        else:
            assert isinstance(key, tuple) and isinstance(value, DiscoverFilters)
            tenant, size = key  # a smaller size: an index whose newest rows are not searched yet
            fresh = AttributeColumns(ROWS)
            for row, entry in rows.items():
                fresh.set_row(row, entry)
            for _ in range(2):  # the second call answers from the cache
                mask, exclusions = constraint_mask(columns, size, tenant, value, 0, 0, now=NOW)
                expected, expected_exclusions = constraint_mask(fresh, size, tenant, value, 0, 0, now=NOW)
                assert np.array_equal(mask, expected)
                assert exclusions == expected_exclusions
            wanted = {r for r, e in rows.items() if r < size and allowed(e, tenant, value)}
            assert set(np.flatnonzero(mask)) == wanted


def test_cached_masks_are_read_only() -> None:
    columns = AttributeColumns(4)
    mask = columns.any_of("region", ["eu-west-1"], 4)
    assert not mask.flags.writeable


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(entries, min_size=1, max_size=ROWS))
def test_setting_fresh_rows_at_once_equals_setting_them_one_by_one(rows: list[CatalogEntry]) -> None:
    """Start-up fills the columns in one pass (set_fresh_rows); it must hold exactly what set_row builds."""
    one_by_one, at_once = AttributeColumns(ROWS), AttributeColumns(ROWS)
    for row, entry in enumerate(rows):
        one_by_one.set_row(row, entry)
    at_once.set_fresh_rows(list(range(len(rows))), rows)
    for name in ("live", "kind", "status", "cost_call", "cost_in", "cost_out", "latency", "quality", "anywhere",
                 "tenant", "visibility", "lease_expires"):  # fmt: skip
        assert np.array_equal(getattr(one_by_one, name), getattr(at_once, name)), name
    assert one_by_one.tenant_codes == at_once.tenant_codes
    assert {f: dict(v) for f, v in one_by_one.postings.items()} == {f: dict(v) for f, v in at_once.postings.items()}
    assert np.array_equal(one_by_one.leased_rows(), at_once.leased_rows())
    for tenant in ("a", "b"):
        filters = DiscoverFilters(regions=("eu-west-1",))
        mask, exclusions = constraint_mask(at_once, len(rows), tenant, filters, 0, 0, now=NOW)
        expected = constraint_mask(one_by_one, len(rows), tenant, filters, 0, 0, now=NOW)
        assert np.array_equal(mask, expected[0]) and exclusions == expected[1]
