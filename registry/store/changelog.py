"""The change log: one row per committed write, in commit order, that every server process follows.

A bigserial alone is not gap-safe: transaction A can take seq 10, transaction B seq 11, and B commit
first; a follower that read 11 and moved its watermark past 10 would never see A. So `append` takes a
transaction-scoped advisory lock before it draws the sequence number. The lock is held until commit,
so seq N+1 is drawn only after N's transaction has ended: any committed row a follower can see has
every lower committed seq visible too, and a follower may read `seq > watermark` without waiting for
gaps (a gap is a rolled-back write and never fills). Writers append as the last statement of their
transaction, so the lock is held only for the insert and the commit. SQLite has one writer at a time
(BEGIN IMMEDIATE), which gives the same order without a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select, text

from registry.store import tables as t
from registry.store.notify import notify

# pg_advisory_xact_lock key: "capreg" + "log" in ASCII, chosen not to collide with other users' keys.
LOG_LOCK_KEY = 0x6361707265676C6F
_INSERT = insert(t.change_log)  # values as parameters: compiled once, not per row


@dataclass(frozen=True, slots=True)
class ChangeRow:
    seq: int
    tenant: str
    entity: str
    entity_id: str
    op: str
    created_at: datetime | None = None  # when the writer made the change (UTC)


def append(conn: Connection, tenant: str, entity: str, entity_id: str, op: str, now: datetime | None = None) -> int:
    """Log one change in the caller's transaction; returns its seq, the write's consistency token."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK_KEY})
    notify(conn, entity)
    key = conn.execute(
        _INSERT,
        {
            "tenant_id": tenant,
            "entity": entity,
            "entity_id": entity_id,
            "op": op,
            "created_at": now or datetime.now(UTC),
        },
    ).inserted_primary_key
    assert key is not None
    return int(key[0])


def append_many(conn: Connection, changes: Sequence[tuple[str, str, str, str]], now: datetime) -> list[int]:
    """Log (tenant, entity, entity_id, op) changes in the caller's transaction, in order, with one lock, one
    notification per entity and one multi-row insert: a bulk write holds the log's lock for one round trip
    rather than three per row. Returns their seqs, in order."""
    if not changes:
        return []
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK_KEY})
    for entity in dict.fromkeys(entity for _, entity, _, _ in changes):
        notify(conn, entity)
    rows = [
        {"tenant_id": tenant, "entity": entity, "entity_id": entity_id, "op": op, "created_at": now}
        for tenant, entity, entity_id, op in changes
    ]
    # Each row's own seq, in the order given (SQLAlchemy's insertmanyvalues keeps them paired).
    returning = insert(t.change_log).returning(t.change_log.c.seq, sort_by_parameter_order=True)
    seqs = [int(seq) for seq in conn.execute(returning, rows).scalars()]
    if len(seqs) != len(rows):
        raise AssertionError(f"the change log returned {len(seqs)} seqs for {len(rows)} rows")
    return seqs


def read_after(conn: Connection, after: int, limit: int, entity: str = "") -> Sequence[ChangeRow]:
    """Committed changes with seq > after (of one entity, when given), oldest first."""
    log = t.change_log.c
    stmt = select(log.seq, log.tenant_id, log.entity, log.entity_id, log.op, log.created_at).where(log.seq > after)
    if entity:
        stmt = stmt.where(log.entity == entity)
    rows = conn.execute(stmt.order_by(log.seq).limit(limit))
    return [
        ChangeRow(int(seq), tenant, kind, entity_id, op, at if at is None or at.tzinfo else at.replace(tzinfo=UTC))
        for seq, tenant, kind, entity_id, op, at in rows
    ]


def last_seq(conn: Connection, entities: Sequence[str] = ()) -> int:
    """The newest committed seq (of these entities, when given); 0 for an empty log."""
    stmt = select(func.coalesce(func.max(t.change_log.c.seq), 0))
    if entities:
        stmt = stmt.where(t.change_log.c.entity.in_(list(entities)))
    return int(conn.execute(stmt).scalar_one())
