"""The vector-space lifecycle in the store, on SQLite and PostgreSQL: create, backfill bookkeeping,
promote, roll back, retire, shadow; every refusal changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from registry.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from registry.domain.models import Agent, AgentKind, Capability, SpaceState, VectorSpace
from registry.embedding.template import text_hash
from registry.store import tables as t
from registry.store.repository import RegistryStore
from registry.store.spaces import SpaceStore
from tests.support import empty_tables
from tests.test_store import DIM, SPACE, register, vector_for

NEW = VectorSpace(name="candidate", model="m2", model_revision="r2", weights_sha256="1" * 64, template="t2", dim=DIM)


@pytest.fixture
def stores(engine: Engine) -> Iterator[tuple[RegistryStore, SpaceStore, int]]:
    empty_tables(engine)
    registry = RegistryStore(engine)
    yield registry, SpaceStore(engine), registry.ensure_space(SPACE).id


def agent(name: str, *caps: str) -> Agent:
    capabilities = tuple(Capability(name=c, version="1.0.0", description=f"{name} does {c}") for c in caps)
    return Agent(tenant="t", name=name, kind=AgentKind.TOOL, capabilities=capabilities)


def backfill_all(spaces: SpaceStore, space_id: int, batch: int = 2) -> int:
    """Embed every missing capability the way a backfill does, in batches; how many were embedded."""
    done = 0
    while found := spaces.missing(space_id, batch):
        _, stored = spaces.put_vectors(
            space_id, [(m, text_hash(m.capability.description), vector_for(m.capability.description)) for m in found]
        )
        done += stored
    return done


def test_a_new_space_builds_until_every_capability_has_a_vector(stores: tuple[RegistryStore, SpaceStore, int]) -> None:
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x", "y"), serving_id)
    register(registry, agent("b", "z"), serving_id)
    created, seq = spaces.create(NEW)
    assert created.state == SpaceState.BUILDING and seq > 0 and created.created_at is not None
    assert spaces.coverage(created.id).missing == 3
    first = spaces.missing(created.id, 2)
    spaces.put_vectors(created.id, [(m, "h", vector_for("v")) for m in first])
    assert spaces.coverage(created.id).embedded == 2
    rest = spaces.missing(created.id, 10)  # resumes after what is done: nothing is embedded twice
    assert {m.capability.id for m in rest}.isdisjoint({m.capability.id for m in first}) and len(rest) == 1
    assert spaces.mark_ready_if_complete(created.id) == (False, 0)
    spaces.put_vectors(created.id, [(m, "h", vector_for("v")) for m in rest])
    became, ready_seq = spaces.mark_ready_if_complete(created.id)
    assert became and ready_seq > seq
    ready = spaces.get("candidate")
    assert ready.state == SpaceState.READY and ready.ready_at is not None


def test_an_empty_registry_makes_a_new_space_ready_at_once(stores: tuple[RegistryStore, SpaceStore, int]) -> None:
    _, spaces, _ = stores
    assert spaces.create(NEW)[0].state == SpaceState.READY
    with pytest.raises(AlreadyExists):
        spaces.create(NEW)


def test_promote_rollback_and_retire(stores: tuple[RegistryStore, SpaceStore, int]) -> None:
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x"), serving_id)
    candidate, _ = spaces.create(NEW)
    with pytest.raises(FailedPrecondition, match="backfill"):
        spaces.promote("candidate")
    backfill_all(spaces, candidate.id)
    spaces.mark_ready_if_complete(candidate.id)
    promoted, seq = spaces.promote("candidate")
    assert promoted.state == SpaceState.SERVING and promoted.previous_serving_id == serving_id and seq > 0
    assert spaces.get(SPACE.name).state == SpaceState.READY
    with pytest.raises(FailedPrecondition, match="serving"):
        spaces.retire("candidate")
    back, _ = spaces.rollback()
    assert back.name == SPACE.name and back.state == SpaceState.SERVING and back.previous_serving_id == candidate.id
    again, _ = spaces.rollback()  # a rollback of a rollback: the candidate serves again
    assert again.name == "candidate"
    spaces.rollback()
    retired, _ = spaces.retire("candidate")
    assert retired.state == SpaceState.RETIRED and retired.retired_at is not None
    assert spaces.coverage(candidate.id).embedded == 0  # its vectors are gone
    with pytest.raises(FailedPrecondition, match="previous serving space is retired"):
        spaces.rollback()
    with pytest.raises(FailedPrecondition):
        spaces.promote("candidate")
    assert [s.name for s in spaces.list_spaces(include_retired=False)] == [SPACE.name]


def test_a_capability_added_while_building_blocks_promotion_until_it_is_embedded(
    stores: tuple[RegistryStore, SpaceStore, int],
) -> None:
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x"), serving_id)
    candidate, _ = spaces.create(NEW)
    backfill_all(spaces, candidate.id)
    spaces.mark_ready_if_complete(candidate.id)
    register(registry, agent("late", "y"), serving_id)  # only the old space got its vector
    with pytest.raises(FailedPrecondition, match="lacks vectors for 1 of 2"):
        spaces.promote("candidate")
    assert spaces.get(SPACE.name).state == SpaceState.SERVING  # the refusal changed nothing
    assert backfill_all(spaces, candidate.id) == 1
    assert spaces.promote("candidate")[0].state == SpaceState.SERVING


def test_a_capability_changed_after_it_was_read_for_backfill_is_embedded_from_its_new_text(
    stores: tuple[RegistryStore, SpaceStore, int], engine: Engine
) -> None:
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x"), serving_id)
    candidate, _ = spaces.create(NEW)
    [read] = spaces.missing(candidate.id, 10)
    old_text = read.capability.description
    changed = Capability(name="x", version="1.0.0", description="a does x, now in French too")
    register(registry, replace(agent("a"), capabilities=(changed,)), serving_id)  # e.g. on another replica
    assert spaces.put_vectors(candidate.id, [(read, text_hash(old_text), vector_for(old_text))]) == (0, 0)
    assert spaces.coverage(candidate.id).missing == 1  # the stale vector was not stored
    assert backfill_all(spaces, candidate.id) == 1  # the next batch reads and embeds the current text
    with engine.connect() as conn:
        stored = conn.execute(
            select(t.capability_vectors.c.text_sha256).where(t.capability_vectors.c.space_id == candidate.id)
        ).scalar_one()
    assert stored == text_hash(changed.description) != text_hash(old_text)


@pytest.mark.parametrize(
    "template", ["{agent_name}: {agent_description}. {name}. {description}", "{name}. {description}"]
)
def test_an_agent_changed_after_it_was_read_for_backfill_matters_only_to_a_template_that_shows_it(
    stores: tuple[RegistryStore, SpaceStore, int], template: str
) -> None:
    """Only the agent's description changes: the capability rows are as they were. A space whose text shows
    agent fields must not keep the vector of the old agent text; one whose text does not may."""
    registry, spaces, serving_id = stores
    before = replace(agent("a", "x"), description="reads invoices")
    register(registry, before, serving_id)
    candidate, _ = spaces.create(replace(NEW, template=template))
    [read] = spaces.missing(candidate.id, 10)
    register(registry, replace(before, description="reads invoices and receipts"), serving_id)
    [now] = spaces.missing(candidate.id, 10)
    assert now.capability.updated_at == read.capability.updated_at  # the capability itself did not change
    seq, stored = spaces.put_vectors(candidate.id, [(read, "h", vector_for("old agent text"))])
    if "{agent_" in template:
        assert (seq, stored) == (0, 0) and spaces.coverage(candidate.id).missing == 1
        assert backfill_all(spaces, candidate.id) == 1  # the next batch embeds the current agent text
    else:
        assert seq > 0 and stored == 1 and spaces.coverage(candidate.id).missing == 0


def test_shadow_is_for_candidates_only_and_unknown_names_are_not_found(
    stores: tuple[RegistryStore, SpaceStore, int],
) -> None:
    _, spaces, _ = stores
    spaces.create(NEW)
    assert spaces.set_shadow("candidate", 0.25)[0].shadow_fraction == 0.25
    with pytest.raises(FailedPrecondition):
        spaces.set_shadow(SPACE.name, 0.5)
    for call in (spaces.get, spaces.promote, spaces.retire):
        with pytest.raises(NotFound):
            call("nope")
    spaces.promote("candidate")
    assert spaces.get("candidate").shadow_fraction == 0.0  # serving: no longer shadowed


def test_a_failed_space_can_be_retired(stores: tuple[RegistryStore, SpaceStore, int]) -> None:
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x"), serving_id)
    candidate, _ = spaces.create(NEW)
    assert spaces.fail(candidate.id, "the model would not load") > 0
    failed = spaces.get("candidate")
    assert failed.state == SpaceState.FAILED and failed.error == "the model would not load"
    with pytest.raises(FailedPrecondition, match="failed"):
        spaces.put_vectors(candidate.id, [])
    assert spaces.retire("candidate")[0].state == SpaceState.RETIRED


def test_a_text_changed_by_a_writer_unaware_of_a_new_space_leaves_no_stale_vector_there(
    stores: tuple[RegistryStore, SpaceStore, int], engine: Engine
) -> None:
    """A process that has not yet read the space's creation registers into the serving space only. The new
    space's vector of the old text is dropped in the same transaction: the capability is missing there again,
    so promotion waits and the backfill embeds the current text. The serving space keeps its vector."""
    registry, spaces, serving_id = stores
    register(registry, agent("a", "x", "y"), serving_id)
    candidate, _ = spaces.create(NEW)
    assert backfill_all(spaces, candidate.id) == 2
    assert spaces.mark_ready_if_complete(candidate.id)[0]
    changed = Capability(name="x", version="1.0.0", description="a does x, now in French too")
    unchanged = agent("a", "y").capabilities[0]
    register(registry, replace(agent("a"), capabilities=(changed, unchanged)), serving_id)  # knows no candidate
    assert spaces.coverage(candidate.id).missing == 1  # x only: y's text did not change
    with pytest.raises(FailedPrecondition, match="lacks vectors"):
        spaces.promote("candidate")
    assert backfill_all(spaces, candidate.id) == 1
    with engine.connect() as conn:
        vectors = t.capability_vectors.c
        stored = set(conn.execute(select(vectors.text_sha256).where(vectors.space_id == candidate.id)).scalars())
        serving = set(conn.execute(select(vectors.text_sha256).where(vectors.space_id == serving_id)).scalars())
    assert text_hash(changed.description) in stored and text_hash("a does x") not in stored
    assert serving == stored  # the serving space got the new text from the write itself
