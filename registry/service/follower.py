"""Follows the change log into this process's index: the one path by which any write, made here or on
another replica, reaches Discover.

Every server process runs one follower. It reads committed changes after its position (gap-safe, see
registry/store/changelog.py), re-reads the current state of each agent they name and makes the index
match it; other entities (policies, keys) go to their own handlers. A write made here waits for the
follower to pass its seq before it answers, so the writer reads its writes; on any other replica
`Discover(min_seq=token)` waits the same way. NOTIFY on PostgreSQL wakes the follower at once; a poll
every `poll_s` is the fallback and the only trigger on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from registry.domain.errors import InvalidArgument
from registry.service.serving import Spaces
from registry.store.changelog import ChangeRow
from registry.store.repository import RegistryStore
from registry.telemetry import current

log = logging.getLogger(__name__)
Handler = Callable[[], Awaitable[object]]


class ChangeFollower:
    def __init__(
        self,
        store: RegistryStore,
        spaces: Spaces,
        *,
        handlers: Mapping[str, Handler] | None = None,
        poll_s: float = 0.5,
        batch: int = 1000,
    ):
        self._store = store
        self._spaces = spaces
        self._handlers = dict(handlers or {})
        self._removal_listeners: list[Callable[[list[str]], None]] = []
        self._batches: deque[tuple[int, frozenset[str]]] = deque(maxlen=4096)  # (position, entities) applied
        self._applied_event = asyncio.Event()  # replaced (after being set) by every applied batch
        self._poll_s = poll_s
        self._batch = batch
        self.position = spaces.serving.index.watermark  # every change up to here is applied
        self._lock = asyncio.Lock()  # one catch-up at a time; also held by snapshots
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()  # set once the index has reached the log's head
        self.applied = 0  # changes applied since start
        self.last_error = ""

    @property
    def lock(self) -> asyncio.Lock:
        """Held while the index changes; hold it to read the index at one consistent position."""
        return self._lock

    def handle(self, entity: str, handler: Handler) -> None:
        """Run `handler` (under the follower's lock) after a batch that changed `entity`."""
        self._handlers[entity] = handler

    def on_capabilities_removed(self, listener: Callable[[list[str]], None]) -> None:
        """Call `listener` with the ids of the capabilities a batch removed from the indexes."""
        self._removal_listeners.append(listener)

    def applied_event(self) -> asyncio.Event:
        """Set once the next batch of changes has been applied (take it before reading the position)."""
        return self._applied_event

    def entities_after(self, position: int) -> set[str]:
        """The kinds of change ("agent", "policy", ...) applied after `position`; {"unknown"} when that is
        further back than this follower remembers."""
        if self._batches and self._batches[0][0] > position and len(self._batches) == self._batches.maxlen:
            return {"unknown"}
        found: set[str] = set()
        for applied_at, entities in reversed(self._batches):
            if applied_at <= position:
                break
            found |= entities
        return found

    def wake(self) -> None:
        """Something committed: read the log now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def catch_up(self, target: int = 0) -> int:
        """Apply every committed change after the position; returns the new position. With a target,
        returns as soon as the position has reached it (without reading the log when it already has)."""
        async with self._lock:
            while not (target and self.position >= target):
                rows = await asyncio.to_thread(self._read, self.position)
                if rows:
                    await self._apply(rows)
                if len(rows) < self._batch:
                    self.caught_up.set()
                    break
        return self.position

    async def sync(self, seq: int) -> None:
        """Until change `seq` (a write's token) is applied here. A token ahead of every committed change
        is the caller's error: it was not issued by a write to this database."""
        if self.position >= seq:
            return
        if await self.catch_up(seq) < seq:
            raise InvalidArgument(
                "min_seq",
                f"is ahead of every committed change (the newest is {self.position}); "
                "send a consistency token that a write to this registry returned",
            )

    async def _run(self) -> None:
        backoff = self._poll_s
        while True:
            # Not asyncio.wait_for: on 3.11 it can swallow a cancel that lands as the wait completes,
            # and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception as exc:  # the database went away; keep serving what we have and retry
                if not self.last_error:
                    log.warning("the change-log follower cannot read the log (%s); retrying", _first_line(exc))
                self.last_error = _first_line(exc)
                backoff = min(max(backoff * 2, self._poll_s), 5.0)
            else:
                if self.last_error:
                    log.info("the change-log follower is reading the log again")
                self.last_error = ""
                backoff = self._poll_s

    def _read(self, after: int) -> Sequence[ChangeRow]:
        return self._store.changes_after(after, self._batch)

    async def _apply(self, rows: Sequence[ChangeRow]) -> None:
        telemetry = current()
        with telemetry.span("changelog.apply", **{"capreg.changes": len(rows), "capreg.to_seq": rows[-1].seq}):
            await self._apply_rows(rows)
        applied = datetime.now(UTC)
        for row in rows:
            if row.created_at is not None:
                telemetry.apply_delay.record(max((applied - row.created_at).total_seconds(), 0.0))

    async def _apply_rows(self, rows: Sequence[ChangeRow]) -> None:
        started = time.perf_counter()
        agents: dict[str, int] = {}  # agent id -> its newest seq in this batch
        others: set[str] = set()
        for row in rows:
            if row.entity == "agent":
                agents[row.entity_id] = row.seq
            else:
                others.add(row.entity)
        if agents:  # every live space gets the agents' current state, read in one pass
            spaces = self._spaces.live()
            known = {live.space.id: live.index.text_hashes(set(agents)) for live in spaces}
            states = await asyncio.to_thread(self._store.index_state, list(agents), known)
            removed: set[str] = set()
            for live in spaces:
                with live.index.graph_batch():  # the batch's new vectors go into HNSW in one call
                    for agent_id, seq in agents.items():
                        state = states[live.space.id].get(agent_id, [])
                        removed.update(live.index.replace_agent(agent_id, state, seq))
            if removed:
                for listener in self._removal_listeners:
                    listener(sorted(removed))
        for entity in sorted(others):
            handler = self._handlers.get(entity)
            if handler is not None:
                await handler()
        self.applied += len(rows)
        self.position = rows[-1].seq
        for live in self._spaces.live():
            live.index.watermark = self.position
        self._batches.append((self.position, frozenset(row.entity for row in rows)))
        event, self._applied_event = self._applied_event, asyncio.Event()
        event.set()
        log.debug("applied %d changes up to %d in %.1f ms", len(rows), self.position, _ms(started))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
