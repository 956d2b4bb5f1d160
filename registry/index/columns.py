"""Attribute columns kept beside the vectors, so constraints compile to one boolean mask with numpy,
never a per-candidate Python callback."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from registry.domain.models import AgentKind, AgentStatus, CatalogEntry, DiscoverFilters, Visibility

Mask = npt.NDArray[np.bool_]
KIND_CODES = {kind: i for i, kind in enumerate(AgentKind)}
STATUS_CODES = {status: i for i, status in enumerate(AgentStatus)}
VISIBILITY_CODES = {visibility: i for i, visibility in enumerate(Visibility)}
# Postings: which rows carry each value of these set-valued attributes.
MAX_CACHED_MASKS = 64  # per index: 64 boolean masks, 64 MB at a million rows
POSTING_FIELDS = (
    "tag", "region", "input_mode", "output_mode", "label", "label_key", "capability_name", "agent_id", "shared_with"
)  # fmt: skip


class AttributeColumns:
    def __init__(self, capacity: int = 1024):
        self.capacity = 0
        self.live = np.zeros(0, dtype=np.bool_)
        self.kind = np.zeros(0, dtype=np.int8)
        self.status = np.zeros(0, dtype=np.int8)
        self.cost_call = np.zeros(0, dtype=np.float64)
        self.cost_in = np.zeros(0, dtype=np.float64)
        self.cost_out = np.zeros(0, dtype=np.float64)
        self.latency = np.zeros(0, dtype=np.float64)
        self.quality = np.zeros(0, dtype=np.float64)
        self.anywhere = np.zeros(0, dtype=np.bool_)  # no regions declared: serves every region
        self.tenant = np.zeros(0, dtype=np.int32)
        self.tenant_codes: dict[str, int] = {}
        self.visibility = np.zeros(0, dtype=np.int8)
        self.lease_expires = np.zeros(0, dtype=np.float64)  # epoch seconds; inf: no lease
        self.postings: dict[str, defaultdict[str, set[int]]] = {f: defaultdict(set) for f in POSTING_FIELDS}
        # Sorted row arrays of postings, built on first use after a change: writes are rare, reads hot.
        self._posting_arrays: dict[tuple[str, str], npt.NDArray[np.int64]] = {}
        self._row_keys: dict[int, list[tuple[str, str]]] = {}
        self._leased: set[int] = set()  # live rows with a finite lease: the only ones a lease check must read
        # Masks that depend only on the rows (not on the clock or the request), reused until the next write:
        # a Discover's constraint mask then costs a few numpy ANDs instead of rebuilding each part over every
        # row. `version` counts writes; entries of an older version are rebuilt on use.
        self.version = 0
        self._masks: dict[tuple[object, ...], tuple[int, int, Mask]] = {}
        self._leased_array: tuple[int, npt.NDArray[np.int64]] = (-1, np.zeros(0, dtype=np.int64))
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        for name in (
            "live",
            "kind",
            "status",
            "cost_call",
            "cost_in",
            "cost_out",
            "latency",
            "quality",
            "anywhere",
            "tenant",
            "visibility",
            "lease_expires",
        ):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: old.size] = old
            setattr(self, name, new)
        self.capacity = capacity
        self.version += 1

    def set_fresh_rows(self, rows: Sequence[int], entries: Sequence[CatalogEntry]) -> None:
        """set_row for many rows never set before (start-up: a snapshot or the catalog): each column is
        assigned once from a list, which costs a third of a numpy item assignment per row and column."""
        if not rows:
            return
        self.version += 1
        at = np.asarray(rows, dtype=np.int64)
        caps = [entry.capability for entry in entries]
        codes = self.tenant_codes
        self.live[at] = True
        self.kind[at] = [KIND_CODES[e.kind] for e in entries]
        self.status[at] = [STATUS_CODES[e.status] for e in entries]
        self.cost_call[at] = [c.cost.per_call_usd for c in caps]
        self.cost_in[at] = [c.cost.per_1k_input_tokens_usd for c in caps]
        self.cost_out[at] = [c.cost.per_1k_output_tokens_usd for c in caps]
        self.latency[at] = [c.latency_p50_ms for c in caps]
        self.quality[at] = [c.quality_prior for c in caps]
        self.anywhere[at] = [not c.regions for c in caps]
        self.tenant[at] = [codes.setdefault(e.tenant, len(codes) + 1) for e in entries]
        self.visibility[at] = [VISIBILITY_CODES[e.visibility] for e in entries]
        leases = np.array([e.lease_expires_at for e in entries], dtype=np.float64)
        self.lease_expires[at] = leases
        self._leased.update(at[np.isfinite(leases)].tolist())
        postings = self.postings
        for row, entry in zip(rows, entries, strict=True):
            keys = _posting_keys(entry)
            for field, value in keys:
                postings[field][value].add(row)
            self._row_keys[row] = keys
        self._posting_arrays.clear()

    def set_row(self, row: int, entry: CatalogEntry) -> None:
        self.clear_row(row)  # counts as the write that invalidates cached masks
        cap = entry.capability
        self.live[row] = True
        self.kind[row] = KIND_CODES[entry.kind]
        self.status[row] = STATUS_CODES[entry.status]
        self.cost_call[row] = cap.cost.per_call_usd
        self.cost_in[row] = cap.cost.per_1k_input_tokens_usd
        self.cost_out[row] = cap.cost.per_1k_output_tokens_usd
        self.latency[row] = cap.latency_p50_ms
        self.quality[row] = cap.quality_prior
        self.anywhere[row] = not cap.regions
        self.tenant[row] = self.tenant_codes.setdefault(entry.tenant, len(self.tenant_codes) + 1)
        self.visibility[row] = VISIBILITY_CODES[entry.visibility]
        self.lease_expires[row] = entry.lease_expires_at
        keys = _posting_keys(entry)
        for field, value in keys:
            self.postings[field][value].add(row)
            self._posting_arrays.pop((field, value), None)
        self._row_keys[row] = keys
        if np.isfinite(entry.lease_expires_at):
            self._leased.add(row)

    def clear_row(self, row: int) -> None:
        self.version += 1
        self.live[row] = False
        self._leased.discard(row)
        for field, value in self._row_keys.pop(row, []):
            self._posting_arrays.pop((field, value), None)
            rows = self.postings[field][value]
            rows.discard(row)
            if not rows:
                del self.postings[field][value]

    def posting(self, field: str, value: str) -> npt.NDArray[np.int64]:
        """The rows carrying `value` in `field`, as a cached array."""
        key = (field, value)
        rows = self._posting_arrays.get(key)
        if rows is None:
            found = self.postings[field].get(value, ())
            rows = np.fromiter(sorted(found), dtype=np.int64, count=len(found))
            self._posting_arrays[key] = rows
        return rows

    def cached(self, key: tuple[object, ...], size: int, build: Callable[[], Mask]) -> Mask:
        """`build()`, or the same mask built since the last write (read-only: callers combine, never edit)."""
        hit = self._masks.get(key)
        if hit is not None and hit[0] == self.version and hit[1] == size:
            return hit[2]
        mask = build()
        mask.flags.writeable = False
        if len(self._masks) >= MAX_CACHED_MASKS:
            self._masks.clear()
        self._masks[key] = (self.version, size, mask)
        return mask

    def rows_with(self, field: str, value: str, size: int) -> Mask:
        return self.any_of(field, (value,), size)

    def any_of(self, field: str, values: Iterable[str], size: int) -> Mask:
        wanted = tuple(sorted(set(values)))

        def build() -> Mask:
            mask = np.zeros(size, dtype=np.bool_)
            for value in wanted:
                rows = self.posting(field, value)  # sorted: rows at or past `size` are cut off cheaply
                mask[rows[: np.searchsorted(rows, size)]] = True
            return mask

        return self.cached(("any_of", field, wanted), size, build)

    def leased_rows(self) -> npt.NDArray[np.int64]:
        """Rows with a finite lease (sorted), cached until the next write."""
        if self._leased_array[0] != self.version:
            rows = np.fromiter(sorted(self._leased), dtype=np.int64, count=len(self._leased))
            self._leased_array = (self.version, rows)
        return self._leased_array[1]


def visible_to(columns: AttributeColumns, size: int, tenant: str) -> Mask:
    """Rows the tenant may see: its own, public ones, and those shared with it."""

    def build() -> Mask:
        own = columns.tenant[:size] == columns.tenant_codes.get(tenant, -1)
        public = columns.visibility[:size] == VISIBILITY_CODES[Visibility.PUBLIC]
        shared = columns.rows_with("shared_with", tenant, size) & (
            columns.visibility[:size] == VISIBILITY_CODES[Visibility.SHARED]
        )
        visible: Mask = own | public | shared
        return visible

    return columns.cached(("visible", tenant), size, build)


def _posting_keys(entry: CatalogEntry) -> list[tuple[str, str]]:
    """The (field, value) postings a row carries. Plain appends: start-up calls this once per row, and a
    comprehension per field costs more than the few items it builds."""
    cap = entry.capability
    keys = [("capability_name", cap.name), ("agent_id", entry.agent_id)]
    append = keys.append
    for tenant in entry.shared_with:
        append(("shared_with", tenant))
    for key, value in entry.labels.items():
        append(("label_key", key))
        append(("label", f"{key}={value}"))
    for tag in cap.tags:
        append(("tag", tag))
    for region in cap.regions:
        append(("region", region))
    for mode in cap.input_modes:
        append(("input_mode", mode))
    for mode in cap.output_modes:
        append(("output_mode", mode))
    return keys


class MaskBuilder:
    """ANDs constraints into one mask, counting how many live rows each one removed, in order."""

    def __init__(self, columns: AttributeColumns, size: int):
        self.columns = columns
        self.size = size
        self.mask = columns.live[:size].copy()
        self.exclusions: dict[str, int] = {}
        self._count = int(np.count_nonzero(self.mask))

    def apply(self, reason: str, allowed: Mask) -> None:
        np.logical_and(self.mask, allowed, out=self.mask)
        count = int(np.count_nonzero(self.mask))
        if count < self._count:
            self.exclusions[reason] = self.exclusions.get(reason, 0) + self._count - count
        self._count = count

    def exclude_rows(self, reason: str, rows: npt.NDArray[np.int64]) -> None:
        """Exclude these rows: costs O(len(rows)), not O(size)."""
        removed = int(np.count_nonzero(self.mask[rows]))
        if removed:
            self.mask[rows] = False
            self.exclusions[reason] = self.exclusions.get(reason, 0) + removed
            self._count -= removed

    @property
    def allowed(self) -> int:
        return self._count


def constraint_mask(
    columns: AttributeColumns,
    size: int,
    tenant: str,
    filters: DiscoverFilters,
    input_tokens: int,
    output_tokens: int,
    budget_left_usd: float | None = None,
    policy_mask: Mask | None = None,
    now: float | None = None,
) -> tuple[Mask, dict[str, int]]:
    """The rows a Discover may return, and how many live rows each constraint removed (in order)."""
    builder = MaskBuilder(columns, size)
    apply = builder.apply
    apply("visibility", visible_to(columns, size, tenant))
    if policy_mask is not None:
        apply("policy", policy_mask)
    apply(
        "status", columns.cached(("active",), size, lambda: columns.status[:size] == STATUS_CODES[AgentStatus.ACTIVE])
    )
    leased = columns.leased_rows()
    leased = leased[leased < size]
    if leased.size:
        builder.exclude_rows("lease", leased[columns.lease_expires[leased] <= (time.time() if now is None else now)])
    if filters.kinds:
        codes = sorted(KIND_CODES[k] for k in filters.kinds)
        apply("filter.kinds", columns.cached(("kinds", *codes), size, lambda: np.isin(columns.kind[:size], codes)))
    for tag in filters.tags_all:
        apply("filter.tags_all", columns.rows_with("tag", tag, size))
    if filters.tags_any:
        apply("filter.tags_any", columns.any_of("tag", filters.tags_any, size))
    if filters.regions:
        regions = tuple(sorted(set(filters.regions)))
        apply(
            "filter.regions",
            columns.cached(
                ("regions", *regions), size, lambda: columns.any_of("region", regions, size) | columns.anywhere[:size]
            ),
        )
    for mode in filters.input_modes:
        apply("filter.input_modes", columns.rows_with("input_mode", mode, size))
    for mode in filters.output_modes:
        apply("filter.output_modes", columns.rows_with("output_mode", mode, size))
    if filters.max_cost_usd is not None or budget_left_usd is not None:
        cost = estimated_cost(columns, size, input_tokens, output_tokens)
        if budget_left_usd is not None:
            apply("budget", cost <= budget_left_usd)
        if filters.max_cost_usd is not None:
            apply("filter.max_cost_usd", cost <= filters.max_cost_usd)
    if filters.max_latency_ms is not None:
        apply("filter.max_latency_ms", columns.latency[:size] <= filters.max_latency_ms)
    if filters.min_quality is not None:
        apply("filter.min_quality", columns.quality[:size] >= filters.min_quality)
    for key, value in sorted(filters.labels.items()):
        apply("filter.labels", columns.rows_with("label", f"{key}={value}", size))
    if filters.capability_name:
        apply("filter.capability_name", columns.rows_with("capability_name", filters.capability_name, size))
    return builder.mask, builder.exclusions


def estimated_cost(
    columns: AttributeColumns, size: int, input_tokens: int, output_tokens: int
) -> npt.NDArray[np.float64]:
    return (
        columns.cost_call[:size]
        + columns.cost_in[:size] * (input_tokens / 1000.0)
        + columns.cost_out[:size] * (output_tokens / 1000.0)
    )
