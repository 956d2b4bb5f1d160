"""Budgets: money exact in micro-dollars, atomic reservations under concurrency, expiry, settlement,
period rollover and tenant isolation, on SQLite and PostgreSQL; then the RPCs, Discover with a budget, and
the CLI through real servers.

Time is an injected clock that the tests move; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from capreg.v1 import agent_pb2, budget_pb2, budget_pb2_grpc, discovery_pb2
from capreg_client import AsyncCapregClient, CapregClient, CapregError, InvalidArgumentError, NotFoundError
from click.testing import CliRunner
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from sqlalchemy import Engine, select

from registry.cli.main import cli
from registry.domain.budget import (
    Budget,
    BudgetPeriod,
    BudgetRef,
    BudgetScope,
    ReservationState,
    period_end,
    period_start,
    to_micros,
)
from registry.domain.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound
from registry.domain.models import Caller
from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.service.budget_service import BudgetService
from registry.store import tables as t
from registry.store.budgets import BudgetStore
from registry.store.engine import make_engine
from tests import support
from tests.support import ServerThread, make_agent, make_capability

START = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)
T1, T2 = "acme", "globex"
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: Engine, clock: Clock) -> BudgetStore:
    return BudgetStore(engine, clock)


def new_budget(
    store: BudgetStore,
    limit_usd: float = 10.0,
    *,
    name: str = "team",
    tenant: str = T1,
    period: BudgetPeriod = BudgetPeriod.MONTH,
) -> Budget:
    created = store.create(Budget(tenant=tenant, name=name, limit_usd=limit_usd, period=period)).budget
    assert created is not None
    return created


def usage_micros(engine: Engine, budget_id: str) -> dict[datetime, tuple[int, int]]:
    """Raw usage rows: period start -> (committed, reserved) micro-dollars, read around the store."""
    u = t.budget_usage.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(u.period_start, u.committed_micros, u.reserved_micros).where(u.budget_id == budget_id)
        ).all()
    return {_utc(r.period_start): (r.committed_micros, r.reserved_micros) for r in rows}


def held_micros(engine: Engine, budget_id: str) -> int:
    r = t.budget_reservations.c
    with engine.connect() as conn:
        amounts = conn.execute(
            select(r.amount_micros).where(r.budget_id == budget_id, r.state == ReservationState.HELD.value)
        ).scalars()
        return sum(amounts)


def reservation_states(engine: Engine, budget_id: str) -> list[str]:
    r = t.budget_reservations.c
    with engine.connect() as conn:
        return sorted(conn.execute(select(r.state).where(r.budget_id == budget_id)).scalars())


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


# -- pure domain -------------------------------------------------------------------------------------


def test_periods_are_utc_days_calendar_months_or_everything() -> None:
    late = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert period_start(BudgetPeriod.DAY, late) == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_end(BudgetPeriod.DAY, datetime(2026, 12, 31, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_start(BudgetPeriod.MONTH, late) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_end(BudgetPeriod.MONTH, datetime(2026, 12, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(BudgetPeriod.MONTH, datetime(2028, 2, 1, tzinfo=UTC)) == datetime(2028, 3, 1, tzinfo=UTC)
    assert period_start(BudgetPeriod.TOTAL, late) == datetime(1970, 1, 1, tzinfo=UTC)
    assert period_end(BudgetPeriod.TOTAL, datetime(1970, 1, 1, tzinfo=UTC)) is None
    # Another time zone is the same instant: 01:30 in UTC+2 on the 1st is still the 31st in UTC.
    from datetime import timezone

    plus_two = datetime(2026, 2, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert period_start(BudgetPeriod.DAY, plus_two) == datetime(2026, 1, 31, tzinfo=UTC)
    assert period_start(BudgetPeriod.MONTH, plus_two) == datetime(2026, 1, 1, tzinfo=UTC)


def test_money_is_exact_micro_dollars() -> None:
    assert to_micros(0.1 + 0.2) == 300_000
    assert to_micros(0.3) * 33 == 9_900_000
    assert to_micros(1e9) == 10**15
    assert to_micros(0.0000004) == 0


# -- the store, on both backends ---------------------------------------------------------------------


def test_tenths_add_up_exactly_to_the_limit(store: BudgetStore) -> None:
    budget = new_budget(store, 1.0)
    for _ in range(10):
        store.reserve(T1, budget.id, 0.1, 60)
    with pytest.raises(FailedPrecondition, match=r"\$0\.000000 left"):
        store.reserve(T1, budget.id, 0.000001, 60)
    assert store.remaining_usd(T1, budget.id) == 0.0


def test_commit_and_release_accounting(store: BudgetStore, engine: Engine) -> None:
    budget = new_budget(store, 10.0)
    first = store.reserve(T1, budget.id, 3.0, 60)
    second = store.reserve(T1, budget.id, 2.0, 60)
    assert first.budget.usage is not None and first.budget.usage.reserved_usd == 3.0
    assert second.seq > first.seq

    below = store.commit(T1, first.reservation.id, 2.5)  # spent less than it held: the rest returns
    assert below.reservation.state is ReservationState.COMMITTED and below.reservation.actual_usd == 2.5
    assert below.budget.usage is not None
    assert (below.budget.usage.committed_usd, below.budget.usage.reserved_usd) == (2.5, 2.0)
    assert below.budget.usage.remaining_usd == 5.5

    above = store.commit(T1, second.reservation.id, 3.0)  # spent 1.0 more than it held, which fits
    assert above.budget.usage is not None
    assert (above.budget.usage.committed_usd, above.budget.usage.reserved_usd) == (5.5, 0.0)

    third = store.reserve(T1, budget.id, 4.0, 60)
    before = usage_micros(engine, budget.id)
    with pytest.raises(FailedPrecondition, match="commit at most") as refused:
        store.commit(T1, third.reservation.id, 5.0)  # 1.0 more than held, but only 0.5 is left
    assert "$4.500000" in str(refused.value)
    assert usage_micros(engine, budget.id) == before  # refused means untouched, and still held
    assert store.get_reservation(T1, third.reservation.id).state is ReservationState.HELD

    exact = store.commit(T1, third.reservation.id, 4.5)  # exactly what remains may be spent
    assert exact.budget.usage is not None and exact.budget.usage.remaining_usd == 0.0

    budget = store.update_limit(BudgetRef(tenant=T1, name="team"), 20.0, 0).budget  # type: ignore[assignment]
    fourth = store.reserve(T1, budget.id, 1.25, 60)
    released = store.release(T1, fourth.reservation.id)
    assert released.reservation.state is ReservationState.RELEASED and released.reservation.actual_usd is None
    default = store.commit(T1, store.reserve(T1, budget.id, 0.75, 60).reservation.id, None)  # the held amount
    assert default.reservation.actual_usd == 0.75
    assert usage_micros(engine, budget.id) == {datetime(2026, 1, 1, tzinfo=UTC): (10_750_000, 0)}
    assert held_micros(engine, budget.id) == 0


def test_a_reservation_is_settled_once(store: BudgetStore, engine: Engine) -> None:
    budget = new_budget(store, 10.0)
    committed = store.reserve(T1, budget.id, 1.0, 60).reservation
    store.commit(T1, committed.id, 0.5)
    released = store.reserve(T1, budget.id, 2.0, 60).reservation
    store.release(T1, released.id)
    before = usage_micros(engine, budget.id)
    settles: list[Callable[[], object]] = [
        lambda: store.commit(T1, committed.id, 0.5),
        lambda: store.release(T1, committed.id),
        lambda: store.commit(T1, released.id, None),
        lambda: store.release(T1, released.id),
    ]
    for settle in settles:
        with pytest.raises(FailedPrecondition, match="already"):
            settle()
    assert usage_micros(engine, budget.id) == before == {datetime(2026, 1, 1, tzinfo=UTC): (500_000, 0)}


def test_expired_reservations_release_themselves(store: BudgetStore, engine: Engine, clock: Clock) -> None:
    budget = new_budget(store, 1.0)
    held = store.reserve(T1, budget.id, 1.0, ttl_s=60).reservation
    assert held.expires_at == START + timedelta(seconds=60)
    with pytest.raises(FailedPrecondition):
        store.reserve(T1, budget.id, 0.5, 60)

    clock.advance(seconds=59.999)
    assert store.remaining_usd(T1, budget.id) == 0.0  # not yet
    clock.advance(seconds=0.001)
    assert store.remaining_usd(T1, budget.id) == 1.0  # due exactly at expires_at: reading released it
    assert usage_micros(engine, budget.id) == {datetime(2026, 1, 1, tzinfo=UTC): (0, 0)}
    assert store.get_reservation(T1, held.id).state is ReservationState.EXPIRED
    with pytest.raises(FailedPrecondition, match="expired at 2026-01-31T22:01:00"):
        store.commit(T1, held.id, 1.0)
    with pytest.raises(FailedPrecondition, match="expired"):
        store.release(T1, held.id)
    assert store.reserve(T1, budget.id, 1.0, 60).budget.usage.reserved_usd == 1.0  # type: ignore[union-attr]


def test_reserve_and_commit_release_expired_holds_in_their_own_transaction(
    store: BudgetStore, engine: Engine, clock: Clock
) -> None:
    budget = new_budget(store, 1.0)
    stale = store.reserve(T1, budget.id, 0.75, ttl_s=10).reservation
    fresh = store.reserve(T1, budget.id, 0.25, ttl_s=3600).reservation
    clock.advance(seconds=11)
    # Nobody read the budget since: the hold is still in the table until a write (or the sweeper) looks.
    assert held_micros(engine, budget.id) == 1_000_000
    again = store.reserve(T1, budget.id, 0.75, 60)  # fits only once the stale hold is gone
    assert again.budget.usage is not None and again.budget.usage.remaining_usd == 0.0
    assert held_micros(engine, budget.id) == 1_000_000
    assert reservation_states(engine, budget.id) == ["expired", "held", "held"]

    clock.advance(seconds=60)  # `again` is due now; committing `fresh` releases it on the way
    assert store.commit(T1, fresh.id, 0.25).budget.usage.remaining_usd == 0.75  # type: ignore[union-attr]
    assert store.get_reservation(T1, stale.id).state is ReservationState.EXPIRED


def test_the_sweeper_releases_holds_of_budgets_nobody_touches(store: BudgetStore, engine: Engine, clock: Clock) -> None:
    quiet = [new_budget(store, 5.0, name=f"quiet-{i}") for i in range(3)]
    for budget in quiet:
        store.reserve(T1, budget.id, 1.0, ttl_s=30)
        store.reserve(T1, budget.id, 2.0, ttl_s=300)
    assert store.release_expired() == 0
    clock.advance(seconds=31)
    assert store.release_expired() == 3
    assert store.release_expired() == 0
    for budget in quiet:
        assert reservation_states(engine, budget.id) == ["expired", "held"]
        assert usage_micros(engine, budget.id) == {datetime(2026, 1, 1, tzinfo=UTC): (0, 2_000_000)}
    log = t.change_log.c
    with engine.connect() as conn:
        ops = conn.execute(select(log.op).where(log.entity == "budget", log.entity_id == quiet[0].id)).scalars()
        assert list(ops) == ["create", "reserve", "reserve", "expire"]


def test_service_sweeper_starts_sweeps_and_stops(store: BudgetStore, engine: Engine, clock: Clock) -> None:
    budget = new_budget(store, 5.0)
    store.reserve(T1, budget.id, 1.0, ttl_s=1)
    clock.advance(seconds=2)

    async def scenario() -> tuple[int, bool, bool]:
        service = BudgetService(store, sweep_interval_s=3600)  # the loop never fires on its own here
        service.start_sweeper()
        service.start_sweeper()  # idempotent
        running = service.sweeping
        released = await service.sweep_once()
        await service.stop_sweeper()
        await service.stop_sweeper()
        return released, running, service.sweeping

    assert asyncio.run(scenario()) == (1, True, False)
    assert reservation_states(engine, budget.id) == ["expired"]


def test_day_and_month_periods_roll_over(store: BudgetStore, engine: Engine, clock: Clock) -> None:
    clock.now = datetime(2026, 1, 31, 23, 59, 0, tzinfo=UTC)
    daily = new_budget(store, 1.0, name="daily", period=BudgetPeriod.DAY)
    monthly = new_budget(store, 1.0, name="monthly", period=BudgetPeriod.MONTH)
    total = new_budget(store, 1.0, name="total", period=BudgetPeriod.TOTAL)
    for budget in (daily, monthly, total):
        store.commit(T1, store.reserve(T1, budget.id, 0.75, 3600).reservation.id, None)
    late = store.reserve(T1, daily.id, 0.25, 3600).reservation  # held on the 31st, settled on the 1st
    with pytest.raises(FailedPrecondition, match="next period starts at 2026-02-01T00:00:00"):
        store.reserve(T1, daily.id, 0.01, 60)

    clock.advance(seconds=61)  # 2026-02-01 00:00:01
    assert store.remaining_usd(T1, daily.id) == 1.0
    assert store.remaining_usd(T1, monthly.id) == 1.0
    assert store.remaining_usd(T1, total.id) == 0.25
    settled = store.commit(T1, late.id, 0.2)
    assert settled.reservation.period_start == datetime(2026, 1, 31, tzinfo=UTC)
    assert usage_micros(engine, daily.id) == {datetime(2026, 1, 31, tzinfo=UTC): (950_000, 0)}  # not February's
    assert settled.budget.usage is not None
    assert settled.budget.usage.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert settled.budget.usage.period_end == datetime(2026, 2, 2, tzinfo=UTC)

    store.reserve(T1, daily.id, 1.0, 60)  # a whole new day's money
    clock.now = datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    store.reserve(T1, monthly.id, 1.0, 60)
    assert store.get(BudgetRef(tenant=T1, name="monthly")).usage.remaining_usd == 0.0  # type: ignore[union-attr]
    clock.now = datetime(2026, 3, 1, tzinfo=UTC)
    assert store.get(BudgetRef(tenant=T1, name="monthly")).usage.remaining_usd == 1.0  # type: ignore[union-attr]


def test_tenants_never_see_or_use_each_others_budgets(store: BudgetStore) -> None:
    ours = new_budget(store, 10.0, tenant=T1)
    held = store.reserve(T1, ours.id, 1.0, 60).reservation
    theirs = new_budget(store, 3.0, tenant=T2)  # the same name in another tenant is another budget
    assert theirs.id != ours.id and theirs.name == ours.name
    for attempt in (
        lambda: store.get(BudgetRef(id=ours.id, tenant=T2)),
        lambda: store.remaining_usd(T2, ours.id),
        lambda: store.reserve(T2, ours.id, 1.0, 60),
        lambda: store.commit(T2, held.id, 1.0),
        lambda: store.release(T2, held.id),
        lambda: store.get_reservation(T2, held.id),
        lambda: store.update_limit(BudgetRef(id=ours.id, tenant=T2), 100.0, 0),
        lambda: store.delete(BudgetRef(id=ours.id, tenant=T2), 0),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert [b.id for b in store.list_budgets(T2)] == [theirs.id]
    assert store.get(BudgetRef(id=ours.id, tenant=T1)).usage.reserved_usd == 1.0  # type: ignore[union-attr]


def test_names_generations_limits_and_delete(store: BudgetStore, engine: Engine) -> None:
    budget = new_budget(store, 10.0)
    with pytest.raises(AlreadyExists):
        new_budget(store, 5.0)
    held = store.reserve(T1, budget.id, 6.0, 60).reservation
    with pytest.raises(Conflict, match="generation 1, not 7"):
        store.update_limit(BudgetRef(tenant=T1, name="team"), 5.0, 7)
    lowered = store.update_limit(BudgetRef(tenant=T1, name="team"), 5.0, 1)
    assert lowered.budget is not None and lowered.budget.generation == 2
    assert lowered.budget.usage is not None and lowered.budget.usage.remaining_usd == 0.0  # below what is held
    assert store.update_limit(BudgetRef(tenant=T1, name="team"), 5.0, 0).seq == 0  # no change, no log
    with pytest.raises(FailedPrecondition):
        store.reserve(T1, budget.id, 0.01, 60)
    store.release(T1, held.id)  # holds taken before the change stay settleable
    assert store.remaining_usd(T1, budget.id) == 5.0

    with pytest.raises(Conflict):
        store.delete(BudgetRef(id=budget.id, tenant=T1), 1)
    store.reserve(T1, budget.id, 1.0, 60)
    deleted = store.delete(BudgetRef(id=budget.id, tenant=T1), 2)
    assert deleted.budget is None and deleted.seq > lowered.seq
    with pytest.raises(NotFound):
        store.get(BudgetRef(id=budget.id, tenant=T1))
    assert usage_micros(engine, budget.id) == {} and reservation_states(engine, budget.id) == []


# -- concurrency against PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    engine = make_engine(pg_database, pool_size=60)
    yield engine
    engine.dispose()


def _warm(engine: Engine, connections: int) -> None:
    """Open the pool's connections up front, so the threads start their transactions together."""
    held = [engine.connect() for _ in range(connections)]
    for conn in held:
        conn.close()


def _watch_usage(engine: Engine, budget_id: str, done: threading.Event) -> Callable[[], int]:
    """Read the usage row over and over while the writers run; returns the highest committed + reserved."""
    highest = 0

    def watch() -> int:
        nonlocal highest
        while not done.is_set():
            for committed, reserved in usage_micros(engine, budget_id).values():
                highest = max(highest, committed + reserved)
        return highest

    return watch


@pytest.mark.postgres
def test_fifty_concurrent_reservations_never_overspend(pg_engine: Engine) -> None:
    """50 threads, each with its own connection, reserve $0.30 of $10 at the same instant: exactly 33 win."""
    store = BudgetStore(pg_engine)
    budget = new_budget(store, 10.0, tenant="race-50")
    limit = to_micros(10.0)
    _warm(pg_engine, 51)
    start = threading.Barrier(50)
    done = threading.Event()

    def reserve(_: int) -> str:
        start.wait()
        try:
            return store.reserve("race-50", budget.id, 0.30, 60).reservation.id
        except FailedPrecondition:
            return ""

    with ThreadPoolExecutor(max_workers=51) as pool:
        watcher = pool.submit(_watch_usage(pg_engine, budget.id, done))
        outcomes = list(pool.map(reserve, range(50)))
        done.set()
        highest = watcher.result()

    won = [r for r in outcomes if r]
    assert len(won) == 33 and len(set(won)) == 33
    ((committed, reserved),) = usage_micros(pg_engine, budget.id).values()
    assert committed == 0 and reserved == held_micros(pg_engine, budget.id) == 33 * 300_000 <= limit
    assert highest <= limit
    assert store.remaining_usd("race-50", budget.id) == pytest.approx(0.1)


@pytest.mark.postgres
def test_concurrent_reserve_commit_release_churn_keeps_the_books(pg_engine: Engine) -> None:
    """Writers reserve, commit (above and below the hold) and release against one budget while expired holds
    are swept; at every moment committed + reserved <= limit, and at the end the books balance."""
    offset = timedelta(0)
    store = BudgetStore(pg_engine, lambda: datetime.now(UTC) + offset)  # real time, so short holds expire
    budget = new_budget(store, 5.0, tenant="churn")
    limit = to_micros(5.0)
    _warm(pg_engine, 41)
    start = threading.Barrier(40)
    done = threading.Event()
    spent: list[int] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        start.wait()
        for step in range(6):
            try:
                held = store.reserve("churn", budget.id, 0.25, 3600 if step % 3 else 0.001).reservation
            except FailedPrecondition:
                continue
            try:
                if (worker + step) % 3 == 0:
                    store.release("churn", held.id)
                else:
                    actual = [0.1, 0.25, 0.4][(worker * 7 + step) % 3]
                    try:
                        store.commit("churn", held.id, actual)
                    except FailedPrecondition as refused:
                        if "commit at most" not in str(refused):
                            raise
                        store.release("churn", held.id)  # spending above the hold did not fit
                    else:
                        with lock:
                            spent.append(to_micros(actual))
            except FailedPrecondition as refused:
                assert "expired" in str(refused)  # the 1 ms holds
            if worker == 0:
                store.release_expired()

    with ThreadPoolExecutor(max_workers=41) as pool:
        watcher = pool.submit(_watch_usage(pg_engine, budget.id, done))
        list(pool.map(work, range(40)))
        done.set()
        highest = watcher.result()

    offset = timedelta(hours=2)  # whatever is still held has expired by then
    store.release_expired()
    ((committed, reserved),) = usage_micros(pg_engine, budget.id).values()
    assert highest <= limit and committed + reserved <= limit
    assert reserved == held_micros(pg_engine, budget.id) == 0
    assert committed == sum(spent) > 0


# -- through a real server ---------------------------------------------------------------------------


def _invoke(method: Callable[..., Any], request: Message) -> Any:
    try:
        return method(request, timeout=30)
    except grpc.RpcError as error:
        from capreg_client.errors import from_rpc_error

        raise from_rpc_error(error) from None


def test_budget_rpcs_end_to_end(client: CapregClient) -> None:
    created = client.create_budget("ops", 2.5, period="day", scope="project", scope_id="apollo", tenant=T1)
    budget = created.budget
    assert created.consistency_token > 0 and budget.generation == 1
    assert (budget.scope, budget.scope_id, budget.period) == (
        budget_pb2.BUDGET_SCOPE_PROJECT,
        "apollo",
        budget_pb2.BUDGET_PERIOD_DAY,
    )
    assert budget.remaining_usd == 2.5 and budget.HasField("period_end")
    assert client.get_budget("ops", tenant=T1).id == client.get_budget(id=budget.id, tenant=T1).id == budget.id
    assert [b.name for b in client.list_budgets(tenant=T1)] == ["ops"]
    with pytest.raises(CapregError) as taken:
        client.create_budget("ops", 1.0, tenant=T1)
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS

    held = client.reserve(budget.id, 1.0, ttl_s=90, tenant=T1)
    assert held.reservation.state == budget_pb2.RESERVATION_STATE_HELD
    assert held.budget.reserved_usd == 1.0 and held.consistency_token > created.consistency_token
    assert (held.reservation.expires_at.ToDatetime() - held.reservation.create_time.ToDatetime()).seconds == 90
    with pytest.raises(CapregError) as too_much:
        client.reserve(budget.id, 2.0, tenant=T1)
    assert too_much.value.code == FAILED_PRECONDITION and "$1.500000 left" in too_much.value.message

    spent = client.commit(held.reservation.id, 0.4, tenant=T1)
    assert spent.reservation.state == budget_pb2.RESERVATION_STATE_COMMITTED
    assert spent.reservation.actual_usd == 0.4 and spent.budget.remaining_usd == pytest.approx(2.1)
    with pytest.raises(CapregError) as twice:
        client.commit(held.reservation.id, 0.4, tenant=T1)
    assert twice.value.code == FAILED_PRECONDITION

    other = client.reserve(budget.id, 0.5, tenant=T1)
    back = client.release(other.reservation.id, tenant=T1)
    assert back.reservation.state == budget_pb2.RESERVATION_STATE_RELEASED
    assert not back.reservation.HasField("actual_usd")
    assert client.get_reservation(other.reservation.id, tenant=T1).state == budget_pb2.RESERVATION_STATE_RELEASED

    raised = client.update_budget(3.0, "ops", tenant=T1, expected_generation=1)
    assert raised.budget.generation == 2 and raised.budget.remaining_usd == pytest.approx(2.6)
    with pytest.raises(CapregError) as stale:
        client.update_budget(4.0, "ops", tenant=T1, expected_generation=1)
    assert stale.value.code == grpc.StatusCode.ABORTED

    for foreign in (
        lambda: client.get_budget(id=budget.id),  # the default tenant
        lambda: client.reserve(budget.id, 0.1, tenant=T2),
        lambda: client.get_reservation(other.reservation.id, tenant=T2),
        lambda: client.delete_budget(id=budget.id, tenant=T2),
    ):
        with pytest.raises(NotFoundError):
            foreign()
    client.delete_budget("ops", tenant=T1)
    with pytest.raises(NotFoundError):
        client.get_budget("ops", tenant=T1)


def test_discover_with_a_budget_excludes_what_it_cannot_afford(client: CapregClient) -> None:
    text = "summarize this quarterly report"
    for name, per_call in (("frugal-summarizer", 0.01), ("lavish-summarizer", 1.0)):
        capability = make_capability(
            "summarize-report",
            description="Summarizes long business reports into one page.",
            cost=agent_pb2.Cost(per_call_usd=per_call),
        )
        client.register_agent(make_agent(name, capability))
    budget = client.create_budget("discovery", 2.0).budget
    client.reserve(budget.id, 1.5)  # $0.50 left: the $1 agent no longer fits

    plain = client.discover(text, top_k=5)
    assert {m.agent_name for m in plain.matches} == {"frugal-summarizer", "lavish-summarizer"}
    answer = client.discover_request(discovery_pb2.DiscoverRequest(text=text, top_k=5, budget_id=budget.id))
    assert [m.agent_name for m in answer.matches] == ["frugal-summarizer"]
    exclusions = {e.reason: e.count for e in answer.explanation.exclusions}
    assert exclusions.get("budget") == 1

    foreign = client.create_budget("theirs", 100.0, tenant=T2).budget
    for budget_id in (foreign.id, "7b0c5a9e-0000-4000-8000-000000000000"):
        with pytest.raises(NotFoundError):
            client.discover_request(discovery_pb2.DiscoverRequest(text=text, budget_id=budget_id))


def _malformed_cases(budget_id: str, reservation_id: str) -> list[tuple[str, str, Message]]:
    def create(**fields: Any) -> budget_pb2.CreateBudgetRequest:
        values: dict[str, Any] = {"name": "ok", "limit_usd": 1.0}
        values.update(fields)
        return budget_pb2.CreateBudgetRequest(budget=budget_pb2.Budget(**values))

    def reserve(amount: float = 0.1, ttl: Duration | None = None, **fields: Any) -> budget_pb2.ReserveRequest:
        values: dict[str, Any] = {"budget_id": budget_id, "amount_usd": amount, "ttl": ttl}
        values.update(fields)
        return budget_pb2.ReserveRequest(**values)

    nan, inf = float("nan"), float("inf")
    return [
        ("CreateBudget", "budget.name", create(name="")),
        ("CreateBudget", "budget.name", create(name="has space")),
        ("CreateBudget", "budget.tenant", create(tenant="Not_A_Tenant")),
        ("CreateBudget", "budget.limit_usd", create(limit_usd=nan)),
        ("CreateBudget", "budget.limit_usd", create(limit_usd=-1.0)),
        ("CreateBudget", "budget.limit_usd", create(limit_usd=inf)),
        ("CreateBudget", "budget.limit_usd", create(limit_usd=1e12)),
        ("CreateBudget", "budget.scope", create(scope=9)),
        ("CreateBudget", "budget.period", create(period=-3)),
        ("CreateBudget", "budget.scope_id", create(scope=budget_pb2.BUDGET_SCOPE_PRINCIPAL)),
        ("CreateBudget", "budget.scope_id", create(scope_id="someone")),
        ("GetBudget", "budget", budget_pb2.GetBudgetRequest()),
        ("GetBudget", "budget.id", budget_pb2.GetBudgetRequest(budget=budget_pb2.BudgetRef(id="x" * 65))),
        ("ListBudgets", "tenant", budget_pb2.ListBudgetsRequest(tenant="-bad-")),
        (
            "UpdateBudget",
            "limit_usd",
            budget_pb2.UpdateBudgetRequest(budget=budget_pb2.BudgetRef(id=budget_id), limit_usd=nan),
        ),
        (
            "UpdateBudget",
            "expected_generation",
            budget_pb2.UpdateBudgetRequest(budget=budget_pb2.BudgetRef(id=budget_id), expected_generation=-1),
        ),
        ("DeleteBudget", "budget.name", budget_pb2.DeleteBudgetRequest(budget=budget_pb2.BudgetRef(name="\x00"))),
        ("Reserve", "budget_id", reserve(budget_id="")),
        ("Reserve", "budget_id", budget_pb2.ReserveRequest(budget_id="a\nb", amount_usd=1.0)),
        ("Reserve", "amount_usd", reserve(amount=0.0)),
        ("Reserve", "amount_usd", reserve(amount=-0.5)),
        ("Reserve", "amount_usd", reserve(amount=nan)),
        ("Reserve", "amount_usd", reserve(amount=0.0000001)),
        ("Reserve", "ttl", reserve(ttl=Duration(nanos=500_000_000))),
        ("Reserve", "ttl", reserve(ttl=Duration(seconds=2 * 86_400))),
        ("Reserve", "ttl", reserve(ttl=Duration(seconds=-5))),
        ("Reserve", "tenant", reserve(tenant="UPPER")),
        ("Commit", "reservation_id", budget_pb2.CommitRequest()),
        ("Commit", "actual_usd", budget_pb2.CommitRequest(reservation_id=reservation_id, actual_usd=-0.01)),
        ("Commit", "actual_usd", budget_pb2.CommitRequest(reservation_id=reservation_id, actual_usd=inf)),
        ("Release", "reservation_id", budget_pb2.ReleaseRequest(reservation_id=" padded ")),
        ("GetReservation", "reservation_id", budget_pb2.GetReservationRequest()),
        ("Discover", "budget_id", discovery_pb2.DiscoverRequest(text="hello", budget_id="x" * 100)),
    ]


def test_malformed_budget_input_is_invalid_argument_naming_the_field(
    client: CapregClient, server: ServerThread
) -> None:
    budget = client.create_budget("valid", 5.0).budget
    reservation = client.reserve(budget.id, 1.0).reservation
    stub = budget_pb2_grpc.BudgetServiceStub(client._channel)
    failures = []
    for method, field, request in _malformed_cases(budget.id, reservation.id):
        call = client.discover_request if method == "Discover" else getattr(stub, method)
        try:
            _invoke(call, request)
        except InvalidArgumentError as error:
            if error.field != field:
                failures.append(f"{method} {request}: field {error.field!r}, expected {field!r}")
            continue
        except CapregError as error:
            failures.append(f"{method} {request}: {error.code.name} {error.message}, expected INVALID_ARGUMENT")
            continue
        failures.append(f"{method} {request}: succeeded")
    assert not failures, "\n".join(failures)
    after = client.get_budget(id=budget.id)
    assert (after.limit_usd, after.reserved_usd, after.generation) == (5.0, 1.0, 1)  # nothing was written
    assert [b.name for b in client.list_budgets()] == ["valid"]


@pytest.mark.postgres
def test_fifty_concurrent_reserve_rpcs_against_postgres(
    pg_database: str, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    with support.running_server(tmp_path / "data", pg_database, embedder, max_workers=16) as server:
        with CapregClient(server.target) as client:
            budget = client.create_budget("rpc-race", 10.0, tenant="rpc-race").budget

        async def race() -> list[str]:
            async with AsyncCapregClient(server.target, timeout=60) as aio:

                async def one() -> str:
                    try:
                        return (await aio.reserve(budget.id, 0.30, tenant="rpc-race")).reservation.id
                    except CapregError as error:
                        assert error.code == FAILED_PRECONDITION, error
                        return ""

                return await asyncio.gather(*(one() for _ in range(50)))

        won = [r for r in asyncio.run(race()) if r]
        assert len(won) == 33
        usage = usage_micros(server.app.engine, budget.id)
        assert list(usage.values()) == [(0, 33 * 300_000)]
        assert held_micros(server.app.engine, budget.id) == 33 * 300_000


def test_the_service_refuses_before_touching_the_store(store: BudgetStore) -> None:
    service = BudgetService(store)
    caller = Caller(tenant=T1)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("amount_usd", lambda: service.reserve(caller, "some-id", float("nan"))),
        ("ttl", lambda: service.reserve(caller, "some-id", 1.0, ttl_s=0.0)),
        ("budget_id", lambda: service.remaining_usd(caller, "")),
        ("tenant", lambda: service.remaining_usd(Caller(tenant="Bad Tenant"), "x")),
        (
            "budget.scope_id",
            lambda: service.create(Budget(tenant=T1, name="p", limit_usd=1, scope=BudgetScope.PROJECT)),
        ),
    ]
    for field, attempt in cases:
        with pytest.raises(InvalidArgument) as bad:
            asyncio.run(attempt())
        assert bad.value.field == field


# -- the command line --------------------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_budgets(demo_server: ServerThread) -> None:
    target = ("--target", demo_server.target, "--tenant", "cli-budgets")
    code, out = run_cli("budgets", "create", "research", "--limit", "5", "--period", "day", *target)
    assert code == 0 and "research" in out and "$5.000000" in out
    code, out = run_cli("budgets", "list", *target)
    assert code == 0 and "research" in out and "1 budgets" in out
    code, out = run_cli("budgets", "get", "research", "--json", *target)
    budget = json.loads(out)
    assert code == 0 and budget["remaining_usd"] == 5.0 and budget["period"] == "BUDGET_PERIOD_DAY"

    code, out = run_cli("budgets", "reserve", "research", "1.5", "--ttl", "120", "--json", *target)
    assert code == 0
    held = json.loads(out)
    assert held["reservation"]["state"] == "RESERVATION_STATE_HELD" and held["budget"]["remaining_usd"] == 3.5
    code, out = run_cli("budgets", "commit", held["reservation"]["id"], "--actual", "1.25", *target)
    assert code == 0 and "committed" in out and "$1.250000" in out
    code, out = run_cli("budgets", "commit", held["reservation"]["id"], *target)
    assert code == 1 and "FAILED_PRECONDITION" in out and "already committed" in out

    code, out = run_cli("budgets", "reserve", budget["id"], "0.5", "--json", *target)
    reservation_id = json.loads(out)["reservation"]["id"]
    code, out = run_cli("budgets", "release", reservation_id, *target)
    assert code == 0 and "released" in out
    code, out = run_cli("budgets", "reserve", "research", "99", *target)
    assert code == 1 and "does not fit" in out
    code, out = run_cli("budgets", "set-limit", "research", "7", *target)
    assert code == 0 and "$7.000000" in out
    code, out = run_cli("budgets", "create", "bad", "--limit", "nan", *target)
    assert code == 1 and "budget.limit_usd" in out
    code, out = run_cli("budgets", "delete", "research", *target)
    assert code == 0 and "deleted" in out
    code, out = run_cli("budgets", "get", "research", *target)
    assert code == 1 and "NOT_FOUND" in out


@pytest.mark.parametrize(
    "command",
    [
        ["budgets"],
        *[["budgets", c] for c in ("create", "list", "get", "set-limit", "delete", "reserve", "commit", "release")],
    ],
)
def test_every_budgets_command_has_help(command: list[str]) -> None:
    code, out = run_cli(*command, "--help")
    assert code == 0 and "Usage:" in out
