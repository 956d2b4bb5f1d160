"""The KeepAlive stream against a real server: each bad input, on the first message or a later one, ends the
stream with the status and field the unary Heartbeat would give; authentication and tenancy are checked when
the stream opens; and no refusal writes anything."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from capreg.v1 import agent_pb2, registry_pb2
from capreg_client import CapregClient, CapregError
from capreg_client.errors import from_rpc_error
from google.protobuf.duration_pb2 import Duration

from registry.embedding.sentence import SentenceTransformerEmbedder
from tests import support
from tests.support import ServerThread, make_agent, make_capability
from tests.test_snapshots import serve  # running_server, waiting for the change listener on PostgreSQL

KEEP_ALIVE = "/capreg.v1.RegistryService/KeepAlive"
TENANT, OTHER = "streams", "elsewhere"
VECTOR = support.unit(np.linspace(1, 2, 384, dtype=np.float32))
JUNK = b"\xff\xff\xff"  # an invalid wire tag: does not decode as any message
_CLOSE = object()


def leased(name: str, tenant: str = TENANT, ttl_s: int = 3600) -> agent_pb2.Agent:
    """An agent with its own vector (nothing to embed); ttl_s 0: no lease."""
    cap = make_capability("route", vector=agent_pb2.Vector(values=VECTOR.tolist()))
    return make_agent(name, cap, tenant=tenant, lease_ttl=Duration(seconds=ttl_s))


def beat(
    name: str = "", tenant: str = TENANT, ttl: Duration | None = None, id: str = ""
) -> registry_pb2.HeartbeatRequest:
    request = registry_pb2.HeartbeatRequest(agent=agent_pb2.AgentRef(tenant=tenant, name=name, id=id))
    if ttl is not None:
        request.lease_ttl.CopyFrom(ttl)
    return request


class Stream:
    """One KeepAlive call whose messages the test sends one at a time (bytes as they are, or messages)."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = ()):
        self._channel = grpc.insecure_channel(target)
        self._outgoing: queue.Queue[object] = queue.Queue()
        method: grpc.StreamStreamMultiCallable[Any, registry_pb2.HeartbeatResponse] = self._channel.stream_stream(
            KEEP_ALIVE,
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=registry_pb2.HeartbeatResponse.FromString,
        )
        self._call = method(self._requests(), metadata=metadata, timeout=30)

    def _requests(self) -> Iterator[object]:
        while (item := self._outgoing.get(timeout=60)) is not _CLOSE:
            yield item

    def send(self, message: registry_pb2.HeartbeatRequest | bytes) -> None:
        self._outgoing.put(message)

    def receive(self) -> registry_pb2.HeartbeatResponse:
        answer: registry_pb2.HeartbeatResponse = next(self._call)
        return answer

    def refusal(self) -> CapregError:
        """The error that ends the stream; fails if an answer comes instead."""
        try:
            answer = self.receive()
        except grpc.RpcError as error:
            return from_rpc_error(error)
        raise AssertionError(f"the stream answered {answer} instead of refusing")

    def close(self) -> None:
        self._outgoing.put(_CLOSE)
        self._call.cancel()
        self._channel.close()


def first_refusal(target: str, message: registry_pb2.HeartbeatRequest | bytes, api_key: str = "") -> CapregError:
    stream = Stream(target, (("authorization", f"Bearer {api_key}"),) if api_key else ())
    try:
        stream.send(message)
        return stream.refusal()
    finally:
        stream.close()


def unary_refusal(client: CapregClient, message: registry_pb2.HeartbeatRequest) -> CapregError:
    with pytest.raises(CapregError) as refused:
        client._call(client._registry.Heartbeat, message, None)
    return refused.value


def lease_of(client: CapregClient, name: str, tenant: str = TENANT) -> tuple[int, int]:
    """The stored lease expiry (seconds, nanos) of an agent."""
    stamp = client.get_agent(name, tenant=tenant).lease_expire_time
    return stamp.seconds, stamp.nanos


@pytest.fixture
def server(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    with serve(tmp_path / "data", database_url, embedder) as running:
        with CapregClient(running.target, timeout=30) as client:
            client.register_agent(leased("beater"))
            client.register_agent(leased("other-beater"))
            client.register_agent(leased("plain", ttl_s=0))
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[CapregClient]:
    with CapregClient(server.target, timeout=30) as c:
        yield c


def test_a_stream_renews_on_each_message_with_the_ttl_it_carries(server: ServerThread, client: CapregClient) -> None:
    """The path the refusals below leave: a later message with a TTL renews at once, with that TTL."""
    stream = Stream(server.target)
    try:
        stream.send(beat("beater"))
        first = stream.receive()
        assert first.lease_ttl.seconds == 3600 and first.consistency_token > 0
        stream.send(beat("beater", ttl=Duration(seconds=120)))
        second = stream.receive()
        assert second.lease_ttl.seconds == 120
        assert second.consistency_token > first.consistency_token
        stored = client.get_agent("beater", tenant=TENANT)
        assert stored.lease_ttl.seconds == 120 and stored.lease_expire_time == second.lease_expire_time
    finally:
        stream.close()


def test_undecodable_first_message_is_invalid_argument_on_request(server: ServerThread) -> None:
    before = server.app.store.watermark()
    error = first_refusal(server.target, JUNK)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field == "request"
    assert "does not decode" in error.message
    assert server.app.store.watermark() == before


def test_undecodable_later_message_ends_the_stream_on_request(server: ServerThread, client: CapregClient) -> None:
    stream = Stream(server.target)
    try:
        stream.send(beat("beater").SerializeToString())
        token = stream.receive().consistency_token
        lease = lease_of(client, "beater")
        stream.send(JUNK)
        error = stream.refusal()
    finally:
        stream.close()
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field == "request"
    assert server.app.store.watermark() == token
    assert lease_of(client, "beater") == lease


@pytest.mark.parametrize(
    ("message", "code", "field"),
    [
        pytest.param(beat("beater", ttl=Duration(nanos=500_000_000)), "INVALID_ARGUMENT", "lease_ttl", id="ttl-half-s"),
        pytest.param(beat("beater", ttl=Duration(seconds=-3)), "INVALID_ARGUMENT", "lease_ttl", id="ttl-negative"),
        pytest.param(beat("nobody", ttl=Duration(seconds=60)), "NOT_FOUND", None, id="unknown-agent"),
        pytest.param(beat("nobody"), "NOT_FOUND", None, id="unknown-agent-no-ttl"),
        pytest.param(beat("plain"), "FAILED_PRECONDITION", None, id="no-lease-no-ttl"),
        pytest.param(beat(""), "INVALID_ARGUMENT", None, id="no-agent-named"),
    ],
)
def test_a_bad_first_message_is_refused_like_heartbeat_and_changes_nothing(
    server: ServerThread, client: CapregClient, message: registry_pb2.HeartbeatRequest, code: str, field: str | None
) -> None:
    before, lease = server.app.store.watermark(), lease_of(client, "beater")
    streamed = first_refusal(server.target, message)
    assert streamed.code.name == code
    if field is not None:
        assert streamed.field == field
    unary = unary_refusal(client, message)
    assert (unary.code, unary.field) == (streamed.code, streamed.field)
    assert server.app.store.watermark() == before
    assert lease_of(client, "beater") == lease
    assert not client.get_agent("plain", tenant=TENANT).HasField("lease_expire_time")


@pytest.mark.parametrize(
    ("later", "code", "field"),
    [
        pytest.param(beat("other-beater"), "INVALID_ARGUMENT", "agent", id="another-agent"),
        pytest.param(beat("beater", tenant=OTHER), "INVALID_ARGUMENT", "agent", id="same-name-other-tenant"),
        pytest.param(beat("beater", ttl=Duration(nanos=200_000_000)), "INVALID_ARGUMENT", "lease_ttl", id="bad-ttl"),
    ],
)
def test_a_bad_later_message_ends_the_stream_and_changes_nothing(
    server: ServerThread, client: CapregClient, later: registry_pb2.HeartbeatRequest, code: str, field: str
) -> None:
    other = lease_of(client, "other-beater")
    stream = Stream(server.target)
    try:
        stream.send(beat("beater"))
        token = stream.receive().consistency_token
        lease = lease_of(client, "beater")
        stream.send(later)
        error = stream.refusal()
    finally:
        stream.close()
    assert (error.code.name, error.field) == (code, field)
    assert server.app.store.watermark() == token  # nothing after the first renewal
    assert lease_of(client, "beater") == lease
    assert lease_of(client, "other-beater") == other


def test_an_agent_removed_while_its_stream_is_open_ends_the_stream_and_stays_removed(
    server: ServerThread, client: CapregClient
) -> None:
    client.register_agent(leased("short-lived", ttl_s=1))  # renewed by the server every third of a second
    stream = Stream(server.target)
    try:
        stream.send(beat("short-lived"))
        assert stream.receive().lease_ttl.seconds == 1
        gone = client.deregister_agent("short-lived", tenant=TENANT).consistency_token
        while True:  # renewals already on their way may still arrive; the first after the removal fails
            try:
                assert stream.receive().consistency_token < gone
            except grpc.RpcError as error:
                refused = from_rpc_error(error)
                break
    finally:
        stream.close()
    assert refused.code == grpc.StatusCode.NOT_FOUND
    assert server.app.store.watermark() == gone  # no renewal wrote after the removal
    with pytest.raises(CapregError) as missing:
        client.get_agent("short-lived", tenant=TENANT)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


# -- with authentication on -------------------------------------------------------------------------------


@pytest.fixture
def secured(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[ServerThread]:
    data = tmp_path / "data"
    with serve(data, database_url, embedder, auth_enabled=True) as running:
        yield running


def test_a_stream_is_admitted_by_key_role_and_tenant_like_heartbeat(secured: ServerThread, tmp_path: Path) -> None:
    operator = (tmp_path / "data" / "operator.key").read_text().strip()
    with CapregClient(secured.target, api_key=operator, timeout=30) as admin:
        mine = admin.register_agent(leased("mine")).agent
        theirs = admin.register_agent(leased("theirs", tenant=OTHER)).agent
        agent_key = admin.create_key("streams-bot", ["agent"], tenant=TENANT).token
        orchestrator_key = admin.create_key("streams-router", ["orchestrator"], tenant=TENANT).token

        def leases() -> tuple[tuple[int, int], tuple[int, int]]:
            return lease_of(admin, "mine"), lease_of(admin, "theirs", OTHER)

        cases = [
            ("", beat("mine"), {grpc.StatusCode.UNAUTHENTICATED}),
            ("capreg_0123456789abcdef_forged", beat("mine"), {grpc.StatusCode.UNAUTHENTICATED}),
            (orchestrator_key, beat("mine"), {grpc.StatusCode.PERMISSION_DENIED}),
            (agent_key, beat("theirs", tenant=OTHER), {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}),
            (agent_key, beat(id=theirs.id, tenant=""), {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}),
        ]
        for key, message, allowed in cases:
            before, stored = secured.app.store.watermark(), leases()
            streamed = first_refusal(secured.target, message, key)
            with CapregClient(secured.target, api_key=key or None, timeout=30) as caller:
                unary = unary_refusal(caller, message)
            assert streamed.code in allowed, (key[:20], message, streamed)
            assert (streamed.code, streamed.field) == (unary.code, unary.field), (message, streamed, unary)
            assert secured.app.store.watermark() == before
            assert leases() == stored

        # The agent key may keep its own tenant's agent alive, by name or by id, and the stream keeps its
        # identity past the first message: a later message and the server's own renewals are admitted too.
        hour = Duration(seconds=3600)
        for message in (beat("mine", ttl=hour), beat(id=mine.id, tenant="", ttl=hour)):
            stream = Stream(secured.target, (("authorization", f"Bearer {agent_key}"),))
            try:
                stream.send(message)
                first = stream.receive()
                assert first.lease_ttl.seconds == 3600
                stream.send(registry_pb2.HeartbeatRequest(lease_ttl=Duration(seconds=1)))  # no agent: the stream's
                second = stream.receive()
                third = stream.receive()  # renewed by the server a third of a second later
            finally:
                stream.close()
            assert (second.lease_ttl.seconds, third.lease_ttl.seconds) == (1, 1)
            assert first.consistency_token < second.consistency_token < third.consistency_token
            assert third.consistency_token == secured.app.store.watermark()
            assert (third.lease_expire_time.seconds, third.lease_expire_time.nanos) == lease_of(admin, "mine")
