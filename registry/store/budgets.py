"""Budgets and reservations: every read and write, each write one transaction with a change_log row.

Money is integer micro-dollars in the database. A reservation is atomic because the hold is taken by one
conditional statement on the period's usage row,

    UPDATE budget_usage SET reserved = reserved + :amount
    WHERE budget_id = :b AND period_start = :p AND committed + reserved + :amount <= :limit

which PostgreSQL evaluates against the latest committed row under its row lock (a concurrent reservation
waits, then re-checks the condition), and which SQLite runs under its single writer lock. Whatever the
interleaving, committed + reserved never passes the limit.

Lock order, the same in every transaction, so that PostgreSQL transactions never wait on each other in a
cycle: (1) the budget row, FOR SHARE for money movements (which run side by side) and FOR UPDATE for a limit
change or a delete (which then run alone); (2) the one reservation being settled, FOR UPDATE; (3) expired
reservations, FOR UPDATE SKIP LOCKED, which never waits; (4) usage rows in period order, the current period
(the latest) last. Should a deadlock happen all the same (a clock that went backwards), the transaction is
retried from the start.

Expired reservations release themselves lazily: every write to a budget, and every read of what remains,
first turns its held reservations whose time is up into EXPIRED and gives their money back, in the same
transaction. A sweeper (BudgetService) does the same periodically for budgets nobody touches.

Time comes from an injected clock, so tests move it instead of sleeping.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from registry.domain.budget import (
    Budget,
    BudgetPeriod,
    BudgetRef,
    BudgetScope,
    BudgetUsage,
    BudgetWrite,
    Reservation,
    ReservationState,
    ReservationWrite,
    period_end,
    period_start,
    to_micros,
    to_usd,
)
from registry.domain.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from registry.store import changelog
from registry.store import tables as t
from registry.store.retries import retry_conflicts, retry_deadlocks
from registry.store.rows import utc as _aware

log = logging.getLogger(__name__)
HELD = ReservationState.HELD.value
PAST = {"commit": "committed", "release": "released"}


def now_utc() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """In UTC: SQLite hands back naive datetimes, PostgreSQL aware ones in the session's time zone."""
    return _aware(value).astimezone(UTC)


Clock = Callable[[], datetime]


class BudgetStore:
    def __init__(self, engine: Engine, clock: Clock = now_utc):
        self.engine = engine
        self._clock = clock

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # -- budgets: writes -----------------------------------------------------------------------------

    def create(self, budget: Budget) -> BudgetWrite:
        """A new budget; AlreadyExists when its tenant already has one of that name."""
        return retry_conflicts(  # a concurrent create of the same tenant or name
            lambda: self._create_once(budget),
            lambda _: Conflict(f"budget {budget.tenant}/{budget.name} is being created concurrently"),
        )

    @retry_deadlocks
    def _create_once(self, budget: Budget) -> BudgetWrite:
        now = self.now()
        with self.engine.begin() as conn:
            if conn.execute(select(t.tenants.c.id).where(t.tenants.c.id == budget.tenant)).first() is None:
                conn.execute(insert(t.tenants).values(id=budget.tenant, created_at=now))
            taken = conn.execute(
                select(t.budgets.c.id).where(t.budgets.c.tenant_id == budget.tenant, t.budgets.c.name == budget.name)
            ).first()
            if taken is not None:
                raise AlreadyExists(
                    f"budget {budget.tenant}/{budget.name} already exists (id {taken.id}); "
                    "change its limit with UpdateBudget, or pick another name"
                )
            budget_id = str(uuid.uuid4())
            conn.execute(
                insert(t.budgets).values(
                    id=budget_id,
                    tenant_id=budget.tenant,
                    name=budget.name,
                    scope=budget.scope.value,
                    scope_id=budget.scope_id,
                    period=budget.period.value,
                    limit_micros=to_micros(budget.limit_usd),
                    generation=1,
                    created_at=now,
                    updated_at=now,
                )
            )
            seq = _log(conn, budget.tenant, budget_id, "create", now)
            return BudgetWrite(budget=self._load(conn, budget_id, now), seq=seq)

    @retry_deadlocks
    def update_limit(self, ref: BudgetRef, limit_usd: float, expected_generation: int) -> BudgetWrite:
        """A new limit, for the current period too. Lowering it below what is used refuses new holds but
        keeps the ones taken."""
        now = self.now()
        with self.engine.begin() as conn:
            row = _find_budget(conn, ref, lock="update")
            _check_generation(row, expected_generation)
            limit = to_micros(limit_usd)
            if row.limit_micros == limit:
                return BudgetWrite(budget=self._load(conn, row.id, now), seq=0)
            conn.execute(
                update(t.budgets)
                .where(t.budgets.c.id == row.id)
                .values(limit_micros=limit, generation=t.budgets.c.generation + 1, updated_at=now)
            )
            seq = _log(conn, row.tenant_id, row.id, "update", now)
            return BudgetWrite(budget=self._load(conn, row.id, now), seq=seq)

    @retry_deadlocks
    def delete(self, ref: BudgetRef, expected_generation: int) -> BudgetWrite:
        """Removes the budget with its usage and reservations (held ones simply stop existing)."""
        now = self.now()
        with self.engine.begin() as conn:
            row = _find_budget(conn, ref, lock="update")
            _check_generation(row, expected_generation)
            # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys=ON, which a
            # connection made elsewhere may not have.
            conn.execute(delete(t.budget_reservations).where(t.budget_reservations.c.budget_id == row.id))
            conn.execute(delete(t.budget_usage).where(t.budget_usage.c.budget_id == row.id))
            conn.execute(delete(t.budgets).where(t.budgets.c.id == row.id))
            seq = _log(conn, row.tenant_id, row.id, "delete", now)
        return BudgetWrite(budget=None, seq=seq)

    # -- budgets: reads (which release expired reservations first) --------------------------------------

    @retry_deadlocks
    def get(self, ref: BudgetRef) -> Budget:
        now = self.now()
        with self.engine.begin() as conn:
            row = _find_budget(conn, ref)
            self._expire_if_due(conn, [row.id], now)
            return self._load(conn, row.id, now)

    @retry_deadlocks
    def list_budgets(self, tenant: str) -> list[Budget]:
        now = self.now()
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(t.budgets.c.id).where(t.budgets.c.tenant_id == tenant).order_by(t.budgets.c.name)
                ).scalars()
            )
            self._expire_if_due(conn, ids, now)
            return [self._load(conn, budget_id, now) for budget_id in ids]

    @retry_deadlocks
    def remaining_usd(self, tenant: str, budget_id: str) -> float:
        """Money left in the current period: limit - committed - held, never below 0."""
        now = self.now()
        with self.engine.begin() as conn:
            row = _find_budget(conn, BudgetRef(id=budget_id, tenant=tenant))
            self._expire_if_due(conn, [row.id], now)
            usage = _usage(conn, row, now)
            return usage.remaining_usd

    # -- reservations --------------------------------------------------------------------------------

    @retry_deadlocks
    def reserve(self, tenant: str, budget_id: str, amount_usd: float, ttl_s: float) -> ReservationWrite:
        """Hold `amount_usd` in the current period for `ttl_s` seconds, or FailedPrecondition when it
        does not fit in what remains. Atomic: see the module's docstring."""
        now = self.now()
        amount = to_micros(amount_usd)
        refusal: FailedPrecondition | None = None
        result: ReservationWrite | None = None
        with self.engine.begin() as conn:
            row = _find_budget(conn, BudgetRef(id=budget_id, tenant=tenant), lock="share")
            released = _expire(conn, row.id, now)
            if released:
                _log(conn, row.tenant_id, row.id, "expire", now)
            # The current period's row comes last in the lock order: it is the latest period.
            start = period_start(BudgetPeriod(row.period), now)
            usage = t.budget_usage.c
            held = 0
            # More than the whole limit never fits: refused without writing the period's usage row, which
            # is only missing when nothing was used, and then any amount within the limit fits.
            if amount <= row.limit_micros:
                _ensure_usage_row(conn, row.id, start)
                held = conn.execute(
                    update(t.budget_usage)
                    .where(
                        usage.budget_id == row.id,
                        usage.period_start == start,
                        usage.committed_micros + usage.reserved_micros + amount <= row.limit_micros,
                    )
                    .values(reserved_micros=usage.reserved_micros + amount)
                ).rowcount
            if held != 1:
                left = _usage(conn, row, now).remaining_usd
                refusal = FailedPrecondition(
                    f"budget {row.tenant_id}/{row.name} has ${left:.6f} left in this period "
                    f"(limit ${to_usd(row.limit_micros):.6f}); ${to_usd(amount):.6f} does not fit"
                    + _next_period_hint(BudgetPeriod(row.period), start)
                )
            else:
                reservation_id = str(uuid.uuid4())
                conn.execute(
                    insert(t.budget_reservations).values(
                        id=reservation_id,
                        budget_id=row.id,
                        period_start=start,
                        amount_micros=amount,
                        actual_micros=None,
                        state=HELD,
                        expires_at=now + timedelta(seconds=ttl_s),
                        created_at=now,
                        updated_at=now,
                    )
                )
                seq = _log(conn, row.tenant_id, row.id, "reserve", now)
                result = ReservationWrite(
                    reservation=_load_reservation(conn, reservation_id, row.tenant_id),
                    budget=self._load(conn, row.id, now),
                    seq=seq,
                )
        if refusal is not None:
            raise refusal
        assert result is not None
        return result

    def commit(self, tenant: str, reservation_id: str, actual_usd: float | None) -> ReservationWrite:
        """Settle a held reservation with what was spent (its amount when None). Spending more than was
        held is accepted only when the difference fits in what the budget has left."""
        return self._settle(tenant, reservation_id, ReservationState.COMMITTED, actual_usd)

    def release(self, tenant: str, reservation_id: str) -> ReservationWrite:
        """Give a held reservation's money back."""
        return self._settle(tenant, reservation_id, ReservationState.RELEASED, None)

    @retry_deadlocks
    def _settle(
        self, tenant: str, reservation_id: str, outcome: ReservationState, actual_usd: float | None
    ) -> ReservationWrite:
        now = self.now()
        refusal: FailedPrecondition | None = None
        result: ReservationWrite | None = None
        verb = "commit" if outcome is ReservationState.COMMITTED else "release"
        with self.engine.begin() as conn:
            found = _find_reservation(conn, tenant, reservation_id)
            row = _find_budget(conn, BudgetRef(id=found.budget_id, tenant=tenant), lock="share")
            res = _find_reservation(conn, tenant, reservation_id, lock=True)
            released = _expire(conn, row.id, now, lock_period=res.period_start)
            if released:
                _log(conn, row.tenant_id, row.id, "expire", now)
                res = _find_reservation(conn, tenant, reservation_id)  # it may have been one of them
            if res.state != HELD:
                refusal = FailedPrecondition(_not_held(res, verb))
            else:
                amount = res.amount_micros
                actual = amount if actual_usd is None else to_micros(actual_usd)
                committing = outcome is ReservationState.COMMITTED
                usage = t.budget_usage.c
                stmt = update(t.budget_usage).where(usage.budget_id == row.id, usage.period_start == res.period_start)
                if committing and actual > amount:  # the extra must fit like a new hold
                    stmt = stmt.where(
                        usage.committed_micros + usage.reserved_micros + (actual - amount) <= row.limit_micros
                    )
                values: dict[str, Any] = {"reserved_micros": usage.reserved_micros - amount}
                if committing:
                    values["committed_micros"] = usage.committed_micros + actual
                if conn.execute(stmt.values(**values)).rowcount != 1:
                    left = _usage(conn, row, now, res.period_start).remaining_usd
                    refusal = FailedPrecondition(
                        f"reservation {reservation_id} held ${to_usd(amount):.6f}; committing "
                        f"${to_usd(actual):.6f} needs ${to_usd(actual - amount):.6f} more, but budget "
                        f"{row.tenant_id}/{row.name} has ${left:.6f} left in that period; commit at most "
                        f"${to_usd(amount) + left:.6f}, or release it"
                    )
                else:
                    conn.execute(
                        update(t.budget_reservations)
                        .where(t.budget_reservations.c.id == res.id)
                        .values(
                            state=outcome.value,
                            actual_micros=actual if committing else None,
                            updated_at=now,
                        )
                    )
                    seq = _log(conn, row.tenant_id, row.id, verb, now)
                    result = ReservationWrite(
                        reservation=_load_reservation(conn, res.id, row.tenant_id),
                        budget=self._load(conn, row.id, now),
                        seq=seq,
                    )
        if refusal is not None:
            raise refusal
        assert result is not None
        return result

    @retry_deadlocks
    def get_reservation(self, tenant: str, reservation_id: str) -> Reservation:
        now = self.now()
        with self.engine.begin() as conn:
            found = _find_reservation(conn, tenant, reservation_id)
            self._expire_if_due(conn, [found.budget_id], now)
            return _load_reservation(conn, reservation_id, tenant)

    def release_expired(self, max_budgets: int = 100) -> int:
        """The sweeper's pass: release every expired hold of up to `max_budgets` budgets, one transaction
        per budget. Returns how many reservations expired."""
        now = self.now()
        res = t.budget_reservations.c
        with self.engine.connect() as conn:
            budget_ids = list(
                conn.execute(
                    select(res.budget_id)
                    .where(res.state == HELD, res.expires_at <= now)
                    .distinct()
                    .order_by(res.budget_id)
                    .limit(max_budgets)
                ).scalars()
            )
        return sum(self._expire_budget(budget_id, now) for budget_id in budget_ids)

    @retry_deadlocks
    def _expire_budget(self, budget_id: str, now: datetime) -> int:
        with self.engine.begin() as conn:
            return self._expire_if_due(conn, [budget_id], now)

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _expire_if_due(conn: Connection, budget_ids: Iterable[str], now: datetime) -> int:
        """For reads: look (without locks) for expired holds; only when there are some, lock each such
        budget and release them, logging one change per budget."""
        ids = list(budget_ids)
        if not ids:
            return 0
        res = t.budget_reservations.c
        due = list(
            conn.execute(
                select(res.budget_id)
                .where(res.budget_id.in_(ids), res.state == HELD, res.expires_at <= now)
                .distinct()
                .order_by(res.budget_id)
            ).scalars()
        )
        total = 0
        for budget_id in due:
            row = conn.execute(select(t.budgets).where(t.budgets.c.id == budget_id).with_for_update(read=True)).first()
            if row is None:  # deleted meanwhile
                continue
            released = _expire(conn, budget_id, now)
            if released:
                _log(conn, row.tenant_id, budget_id, "expire", now)
            total += released
        return total

    @staticmethod
    def _load(conn: Connection, budget_id: str, now: datetime) -> Budget:
        row = conn.execute(select(t.budgets).where(t.budgets.c.id == budget_id)).one()
        return _budget_from_row(row, _usage(conn, row, now))


def _find_budget(conn: Connection, ref: BudgetRef, *, lock: str = "") -> Any:
    """The budget's row, within ref.tenant only: another tenant's budget is NotFound, like a missing one."""
    stmt = select(t.budgets).where(t.budgets.c.tenant_id == ref.tenant)
    if ref.id:
        stmt = stmt.where(t.budgets.c.id == ref.id)
        what = f"budget id {ref.id}"
    else:
        stmt = stmt.where(t.budgets.c.name == ref.name)
        what = f"budget {ref.name!r}"
    if lock == "share":
        stmt = stmt.with_for_update(read=True)
    elif lock == "update":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"{what} does not exist in tenant {ref.tenant!r}; `capreg budgets list` shows what does")
    return row


def _find_reservation(conn: Connection, tenant: str, reservation_id: str, *, lock: bool = False) -> Any:
    res = t.budget_reservations
    stmt = (
        select(res)
        .join(t.budgets, t.budgets.c.id == res.c.budget_id)
        .where(res.c.id == reservation_id, t.budgets.c.tenant_id == tenant)
    )
    if lock:
        stmt = stmt.with_for_update(of=res)
    row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"reservation {reservation_id} does not exist in tenant {tenant!r}")
    return row


def _expire(conn: Connection, budget_id: str, now: datetime, *, lock_period: datetime | None = None) -> int:
    """Release the budget's held reservations whose time is up; the caller holds the budget row lock.

    Claims them FOR UPDATE SKIP LOCKED, so it never waits on a reservation: one that another transaction
    holds is that transaction's to settle (it will find it due and expire it itself). Then locks the usage
    rows it changes, and `lock_period`'s, in period order, before changing any of them."""
    res = t.budget_reservations.c
    due = conn.execute(
        select(res.id, res.amount_micros, res.period_start)
        .where(res.budget_id == budget_id, res.state == HELD, res.expires_at <= now)
        .order_by(res.id)
        .with_for_update(skip_locked=True)
    ).all()
    by_period: dict[datetime, int] = {}
    for r in due:
        key = utc(r.period_start)
        by_period[key] = by_period.get(key, 0) + r.amount_micros
    periods = set(by_period) | ({utc(lock_period)} if lock_period is not None else set())
    usage = t.budget_usage.c
    if periods:
        conn.execute(
            select(usage.period_start)
            .where(usage.budget_id == budget_id, usage.period_start.in_(sorted(periods)))
            .order_by(usage.period_start)
            .with_for_update()
        ).all()
    if not due:
        return 0
    conn.execute(
        update(t.budget_reservations)
        .where(res.id.in_([r.id for r in due]))
        .values(state=ReservationState.EXPIRED.value, updated_at=now)
    )
    for start in sorted(by_period):
        conn.execute(
            update(t.budget_usage)
            .where(usage.budget_id == budget_id, usage.period_start == start)
            .values(reserved_micros=usage.reserved_micros - by_period[start])
        )
    return len(due)


def _ensure_usage_row(conn: Connection, budget_id: str, start: datetime) -> None:
    """Create the period's usage row unless it exists; a concurrent insert of the same key is no error
    (PostgreSQL waits for it, then does nothing)."""
    values = {"budget_id": budget_id, "period_start": start, "committed_micros": 0, "reserved_micros": 0}
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(t.budget_usage).values(**values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(t.budget_usage).values(**values).on_conflict_do_nothing())
    else:  # pragma: no cover - only the two backends above are supported
        raise NotImplementedError(conn.dialect.name)


def _usage(conn: Connection, row: Any, now: datetime, start: datetime | None = None) -> BudgetUsage:
    """The usage of the period containing `now` (or starting at `start`)."""
    period = BudgetPeriod(row.period)
    start = start if start is not None else period_start(period, now)
    usage = t.budget_usage.c
    found = conn.execute(
        select(usage.committed_micros, usage.reserved_micros).where(
            usage.budget_id == row.id, usage.period_start == start
        )
    ).first()
    committed, reserved = (found.committed_micros, found.reserved_micros) if found is not None else (0, 0)
    return BudgetUsage(
        period_start=utc(start),
        period_end=period_end(period, utc(start)),
        committed_usd=to_usd(committed),
        reserved_usd=to_usd(reserved),
        remaining_usd=to_usd(max(0, row.limit_micros - committed - reserved)),
    )


def _budget_from_row(row: Any, usage: BudgetUsage) -> Budget:
    return Budget(
        id=row.id,
        tenant=row.tenant_id,
        name=row.name,
        limit_usd=to_usd(row.limit_micros),
        scope=BudgetScope(row.scope),
        scope_id=row.scope_id,
        period=BudgetPeriod(row.period),
        generation=row.generation,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        usage=usage,
    )


def _load_reservation(conn: Connection, reservation_id: str, tenant: str) -> Reservation:
    row = conn.execute(select(t.budget_reservations).where(t.budget_reservations.c.id == reservation_id)).one()
    return Reservation(
        id=row.id,
        budget_id=row.budget_id,
        tenant=tenant,
        amount_usd=to_usd(row.amount_micros),
        state=ReservationState(row.state),
        expires_at=utc(row.expires_at),
        period_start=utc(row.period_start),
        actual_usd=to_usd(row.actual_micros) if row.actual_micros is not None else None,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def _log(conn: Connection, tenant: str, budget_id: str, op: str, now: datetime) -> int:
    return changelog.append(conn, tenant, "budget", budget_id, op, now)


def _check_generation(row: Any, expected: int) -> None:
    if expected and row.generation != expected:
        raise Conflict(
            f"budget {row.tenant_id}/{row.name} is at generation {row.generation}, not {expected}; "
            "re-read it and retry, or send expected_generation 0 to overwrite"
        )


def _not_held(res: Any, verb: str) -> str:
    state = ReservationState(res.state)
    if state is ReservationState.EXPIRED:
        return (
            f"reservation {res.id} expired at {utc(res.expires_at).isoformat()} and its money went back to the "
            f"budget; it cannot be {PAST[verb]} now; reserve again"
        )
    if state is ReservationState.COMMITTED:
        return (
            f"reservation {res.id} is already committed (${to_usd(res.actual_micros or 0):.6f} spent); "
            f"a reservation is settled once, so this {verb} changed nothing"
        )
    return f"reservation {res.id} is already released; a reservation is settled once, so this {verb} changed nothing"


def _next_period_hint(period: BudgetPeriod, start: datetime) -> str:
    end = period_end(period, start)
    return f"; the next period starts at {end.isoformat()}" if end is not None else ""
