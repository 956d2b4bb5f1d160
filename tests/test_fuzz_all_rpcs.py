"""Every unary RPC of every capreg.v1 service, fuzzed through a real server with authentication on.

A request comes from one of three sources, mixed in one Hypothesis run per backend:

- generated: any message, built from its descriptor alone (`Generator`): each field absent or present;
  integers at the edges of their type; NaN, the infinities, -0.0, subnormals and 1e308; strings empty,
  blank, up to 5000 characters long, or odd Unicode (RTL and BOM marks, combining characters, NUL and other
  controls, emoji, non-characters); enums with numbers the proto does not define; repeated and map fields,
  sometimes past every list limit; nested messages down to a depth limit; at most one member of a oneof.
- mutated: a valid request (tests.test_auth's builders, and a few richer ones here) with fields dropped,
  replaced by generated values, or flooded with items.
- wire: a valid request's bytes truncated, bit-flipped, spliced into or doubled, or random bytes.

The caller is the cluster operator (its key from data_dir/operator.key), so that authorization passes and
input handling is what is tested; a smaller run uses a tenant operator's key. Every call must get an
expected status (never INTERNAL, UNKNOWN or DATA_LOSS) with a short message, INVALID_ARGUMENT naming the
field at fault; a refused call, and any read, must leave every table and the serving index as they were;
an accepted audited write adds exactly one audit record. The server stays healthy throughout.

Every input the fuzzing once found at fault is also replayed as is (`found_by_fuzzing`), and a request past
the message-size limit is refused.

The budget store's clock is frozen, so that no reservation falls due mid-run: a due reservation is expired
by whichever budget call comes next, refused or not (by design: its money returns either way), and that
would read as a write. Expiry has tests of its own in test_budgets.

CAPREG_FUZZ_EXAMPLES sets the examples of the cluster operator's run (the tenant operator's gets a quarter;
by default 30 per RPC); CAPREG_FUZZ_REPORT names a file that gets one JSON line per (backend, caller, RPC,
source, status) with a count and the first input that got it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from capreg.v1 import agent_pb2, budget_pb2, discovery_pb2, keys_pb2, outcome_pb2, policy_pb2, registry_pb2
from capreg_client import CapregClient
from capreg_client.errors import from_rpc_error
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, select

from registry.domain.auth import PERMISSIONS, Role
from registry.embedding.sentence import SentenceTransformerEmbedder
from registry.transport.auth import AUDITED
from tests.support import ServerThread, make_agent, make_capability, running_server
from tests.test_auth import (
    AUDIT,
    BUD,
    CASES,
    DISC,
    KEYS,
    ME,
    OTHER,
    OUT,
    POL,
    REG,
    World,
    proto_methods,
    secret_of,
    seed,
)

Code = grpc.StatusCode
OK, INVALID = Code.OK, Code.INVALID_ARGUMENT
CLUSTER, TENANT = "cluster-operator", "tenant-operator"

# Every unary RPC of every capreg.v1 service, found in the descriptors: a new RPC is fuzzed without a change here.
RPCS = {path: m for path, m in proto_methods().items() if not (m.client_streaming or m.server_streaming)}
READS = {path for path in RPCS if path.rsplit("/", 1)[1].startswith(("Get", "List", "Discover"))}

# What a caller may be answered. A cluster operator passes every authorization check, so PERMISSION_DENIED
# (and UNAUTHENTICATED: no key is revoked under it) would be a fault; a tenant operator naming another tenant
# gets PERMISSION_DENIED. RESOURCE_EXHAUSTED: the message-size limit. DEADLINE_EXCEEDED is not allowed: no
# call here should come near the 30 s the client waits.
REFUSALS = {
    INVALID,
    Code.NOT_FOUND,
    Code.ABORTED,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.RESOURCE_EXHAUSTED,
}
ALLOWED = {CLUSTER: {OK} | REFUSALS, TENANT: {OK, Code.PERMISSION_DENIED} | REFUSALS}
MAX_DETAILS = 2048  # characters of an error message: an answer never echoes a huge input back
MAX_TRAILER = 8192  # bytes of trailing metadata (the status details)

PER_RPC = 30  # with the other tests here, about 40 s on two cores
EXAMPLES = int(os.environ.get("CAPREG_FUZZ_EXAMPLES", "0")) or PER_RPC * len(RPCS)
TENANT_EXAMPLES = max(EXAMPLES // 4, len(RPCS))
TEXT = "summarize this document"

# -- a message of any type, from its descriptor --------------------------------------------------------

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
INT_EDGES = (0, 1, -1, 2, 5, 100, 1000, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63))
DOUBLE_EDGES = (
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-6,
    4e-7,
    1e308,
    -1e308,
    sys.float_info.max,
    5e-324,
    -5e-324,
    sys.float_info.min,
    1e-310,
    1e6 + 1,
    1e9,
    1e9 + 1,
    1e15,
    2.0**53 + 1,
    86_400_000.5,
)
FLOAT_EDGES = (
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1.0,
    -1.0,
    3.4028234663852886e38,
    -3.4028234663852886e38,
    1.401298464324817e-45,
    1.1754943508222875e-38,
    1e-30,
    1e19,
)
ODD_STRINGS = (
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",
    "\u200f\u05e9\u05dc\u05d5\u05dd",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\ufeffbom",
    "e\u0301\u0301\u0301",
    "\u0303" * 20,
    "😀",
    "👩\u200d👩\u200d👧",
    "\U0010ffff",
    "\ufffe\uffff",
    "\x7f",
    "\x85",
    "\x1b[31mred",
    "\r\n",
    "name\n",
    " padded ",
    "ß",
    "İ",
    "Ⅻ",
    "\u0661\u0662\u0663",
    "%",
    "_",
    "*",
    "..",
    "../../etc/passwd",
    "'; DROP TABLE agents; --",
    '{"a": 1}',
    "null",
    "NaN",
    "-1",
    "1e309",
    "\\u0000",
    "capreg_x_y",
)
LONG_UNITS = ("x", "é", "😀", "\u202e", "\x00", "a b", "e\u0301", "-")
# Long strings cost Hypothesis two choices, not thousands.
LONG_STRINGS = st.builds(
    lambda unit, n: (unit * n)[:n],
    st.sampled_from(LONG_UNITS),
    st.one_of(
        st.sampled_from((64, 65, 128, 129, 256, 500, 501, 1025, 2049, 4000, 4001, 4097, 5000)), st.integers(0, 5000)
    ),
)
BYTES = st.one_of(st.binary(max_size=64), st.sampled_from((b"", b"\x00", b"\xff" * 10)))
FLOOD_SIZES = (33, 65, 101, 257)
UNKNOWN_ENUMS = (-1, 4, 5, 99, 2**31 - 1, -(2**31))


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (*INT_EDGES, low, low + 1, high - 1, high) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def enums(enum: EnumDescriptor) -> st.SearchStrategy[int]:
    """Defined numbers, and (proto3 enums are open) numbers the proto never defined."""
    known = [value.number for value in enum.values]
    return st.one_of(st.sampled_from(known), st.sampled_from(UNKNOWN_ENUMS), st.integers(-(2**31), 2**31 - 1))


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def real_oneof(field: FieldDescriptor) -> bool:
    """A oneof of the proto (not the synthetic one of a proto3 `optional` field)."""
    oneof = field.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == f"_{field.name}")


def entry_fields(field: FieldDescriptor) -> tuple[FieldDescriptor, FieldDescriptor]:
    """The key and value fields of a map field's entry."""
    assert field.message_type is not None
    return field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]


def descriptor_of(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)  # the stubs also allow upb's, which has the same interface


def assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Set any field to a value drawn for it: a dict for a map, a list for a repeated field."""
    if is_map(field):
        container = getattr(message, field.name)
        container.clear()
        _, value_field = entry_fields(field)
        for key, item in value.items():
            if value_field.message_type is not None:
                container[key].CopyFrom(item)
            else:
                container[key] = item
    elif field.is_repeated:
        container = getattr(message, field.name)
        del container[:]
        container.extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).SetInParent()
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


@dataclass(frozen=True)
class Generator:
    """Strategies for any protobuf message, field or value, from descriptors alone.

    `vocabulary` (names, ids and tenants of the seeded world) is mixed into the strings, so that a generated
    request sometimes names something that exists; `dim` is the serving space's, so that a repeated float
    field is sometimes a vector of about the right length."""

    vocabulary: tuple[str, ...]
    dim: int
    max_depth: int = 3

    def strings(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(self.vocabulary), st.sampled_from(ODD_STRINGS), st.text(max_size=40), LONG_STRINGS
        )

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.strings()
        if kind == FieldDescriptor.TYPE_BYTES:
            return BYTES
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(DOUBLE_EDGES), st.floats())
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32))
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            return enums(field.enum_type)
        low, high = INT_RANGES[kind]
        return integers(low, high)

    def single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """One value of the field's type (one item of a repeated field)."""
        if field.message_type is not None:
            return self.message(field.message_type, depth + 1)
        return self.scalar(field)

    def value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """What `assign` takes for the field."""
        if is_map(field):
            key_field, value_field = entry_fields(field)
            entries = st.dictionaries(self.scalar(key_field), self.single(value_field, depth), max_size=4)
            if key_field.type != FieldDescriptor.TYPE_STRING or value_field.message_type is not None:
                return entries
            return st.one_of(entries, st.builds(flooded_map, st.sampled_from(FLOOD_SIZES), self.scalar(value_field)))
        if not field.is_repeated:
            return self.single(field, depth)
        item = self.single(field, depth)
        if field.message_type is not None:
            return st.lists(item, max_size=3)
        lists = st.lists(item, max_size=5)
        if field.type == FieldDescriptor.TYPE_STRING:
            return st.one_of(lists, st.builds(flooded_list, st.sampled_from(FLOOD_SIZES), self.strings()))
        if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return st.one_of(lists, vectors(self.dim, item))
        return lists

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        return messages(self, descriptor, depth)


def flooded_map(n: int, value: Any) -> dict[str, Any]:
    return {f"key-{i}": value for i in range(n)}


def flooded_list(n: int, text: str) -> list[str]:
    return [f"{text}{i}" for i in range(n)]


@st.composite
def vectors(draw: st.DrawFn, dim: int, item: st.SearchStrategy[float]) -> list[float]:
    """About `dim` random values, a few of them replaced by drawn (edge) values."""
    size = draw(st.sampled_from((dim, dim, dim - 1, dim + 1, 2 * dim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values: list[float] = rng.standard_normal(size).astype(np.float32).tolist()
    for _ in range(draw(st.integers(0, 2))):
        values[draw(st.integers(0, size - 1))] = draw(item)
    return values


@st.composite
def messages(draw: st.DrawFn, gen: Generator, descriptor: Descriptor, depth: int) -> Message:
    message = GetMessageClass(descriptor)()
    for oneof in descriptor.oneofs:
        members = [f for f in oneof.fields if real_oneof(f)]
        if members:  # at most one member of a oneof
            chosen = draw(st.sampled_from([None, *members]))
            if chosen is not None and (chosen.message_type is None or depth < gen.max_depth):
                assign(message, chosen, draw(gen.value(chosen, depth)))
    for field in descriptor.fields:
        if real_oneof(field) or (field.message_type is not None and depth >= gen.max_depth):
            continue
        if draw(st.booleans()):
            assign(message, field, draw(gen.value(field, depth)))
    return message


# -- a valid request, mutated --------------------------------------------------------------------------


def slots(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every field of the message and of every message inside it: where a mutation may strike."""
    found: list[tuple[Message, FieldDescriptor]] = []
    for field in descriptor_of(message).fields:
        found.append((message, field))
        if field.message_type is None or is_map(field):
            continue
        if field.is_repeated:
            for item in getattr(message, field.name):
                found += slots(item)
        elif message.HasField(field.name):
            found += slots(getattr(message, field.name))
    return found


def flood(draw: st.DrawFn, gen: Generator, holder: Message, field: FieldDescriptor) -> None:
    """Far too many items, or far too long a string."""
    n = draw(st.sampled_from(FLOOD_SIZES))
    if field.is_repeated and not is_map(field):
        items = list(getattr(holder, field.name)) or [draw(gen.single(field, gen.max_depth - 1))]
        first = items[0]
        assign(holder, field, [f"{first}{i}" for i in range(n)] if isinstance(first, str) else [first] * n)
    elif field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
        text = getattr(holder, field.name) or "x"
        size = draw(st.sampled_from((129, 1025, 4097, 5000)))
        setattr(holder, field.name, (text * (size // len(text) + 1))[:size])
    else:
        assign(holder, field, draw(gen.value(field, gen.max_depth - 1)))


@st.composite
def mutated(draw: st.DrawFn, gen: Generator, seed: Message) -> Message:
    """The seed with up to three faults: a field dropped, replaced by a generated value, or flooded."""
    message = type(seed)()
    message.CopyFrom(seed)
    for _ in range(draw(st.integers(0, 3))):  # 0: the valid request itself
        targets = slots(message)
        if not targets:  # a request with no fields (e.g. GetIndexStatus): only its bytes can be wrong
            break
        holder, field = targets[draw(st.integers(0, len(targets) - 1))]
        how = draw(st.sampled_from(("drop", "replace", "replace", "flood")))
        if how == "drop":
            holder.ClearField(field.name)
        elif how == "flood":
            flood(draw, gen, holder, field)
        else:
            assign(holder, field, draw(gen.value(field, gen.max_depth - 1)))
    return message


@st.composite
def corrupted(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A valid request's bytes truncated, with a bit flipped, with bytes spliced in, twice over; or noise."""
    good = draw(st.sampled_from(seeds))
    how = draw(st.sampled_from(("random", "truncated", "flipped", "spliced", "doubled")))
    if how == "random" or not good:
        return draw(st.binary(max_size=300))
    if how == "doubled":  # still decodes: the fields of both copies merge
        return good + good
    cut = draw(st.integers(0, len(good) - 1))
    if how == "truncated":
        return good[:cut]
    if how == "flipped":
        return good[:cut] + bytes([good[cut] ^ (1 << draw(st.integers(0, 7)))]) + good[cut + 1 :]
    noise = draw(
        st.one_of(st.binary(min_size=1, max_size=12), st.sampled_from((b"\xff" * 11, b"\x0a\xff\xff\xff\x7f")))
    )
    return good[:cut] + noise + good[cut:]


# -- the server, its seeded world, and what each call must satisfy -------------------------------------


@dataclass
class Rig:
    backend: str
    server: ServerThread
    channel: grpc.Channel
    admin: CapregClient
    tokens: dict[str, str]  # caller -> bearer token
    seeds: dict[str, list[Message]]  # RPC -> valid requests
    generator: Generator
    tables: MetaData
    # What the last call left: the next one starts from it, as nothing else writes in between (a write from
    # elsewhere would be blamed on the next call, never missed).
    last: Snapshot | None = None


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, list[tuple[Any, ...]]]
    index: tuple[Any, ...]

    def changes(self, other: Snapshot) -> list[str]:
        changed = [name for name, rows in self.tables.items() if other.tables.get(name) != rows]
        return changed + (["serving index"] if self.index != other.index else [])


def snapshot(rig: Rig) -> Snapshot:
    """Every row of every table (as reflected from the database), and the serving index's bookkeeping, once
    the index has caught up with the log (writes that are not agents' do not wait for it)."""
    rig.server.run(rig.server.app.follower.catch_up())
    with rig.server.app.engine.connect() as conn:
        tables = {
            name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*(list(table.primary_key.columns) or table.columns)))
            ]
            for name, table in rig.tables.tables.items()
        }
    index = rig.server.app.serving.index
    return Snapshot(tables, (index.watermark, index.live_count, index.size, tuple(sorted(index.row_of.items()))))


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    field: str | None
    trailer_bytes: int


def invoke(rig: Rig, method: str, payload: Message | bytes, caller: str) -> Outcome:
    """One call through a raw channel: a message serialized as is, or bytes sent as they are."""
    response_type = GetMessageClass(RPCS[method].output_type)
    serialize: Callable[[Any], bytes] | None = None if isinstance(payload, bytes) else _serialize
    stub: grpc.UnaryUnaryMultiCallable[Any, Message] = rig.channel.unary_unary(
        method, request_serializer=serialize, response_deserializer=response_type.FromString
    )
    try:
        stub(payload, metadata=(("authorization", f"Bearer {rig.tokens[caller]}"),), timeout=30)
    except grpc.RpcError as error:
        trailers: Any = error.trailing_metadata() or ()
        size = sum(len(key) + len(value) for key, value in trailers)
        return Outcome(error.code(), error.details() or "", from_rpc_error(error).field, size)
    return Outcome(OK, "", None, 0)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def decodes(method: str, payload: Message | bytes) -> bool:
    if isinstance(payload, Message):
        return True
    try:
        GetMessageClass(RPCS[method].input_type).FromString(payload)
    except DecodeError:
        return False
    return True


def show(payload: Message | bytes, limit: int = 600) -> str:
    if isinstance(payload, bytes):
        text = f"bytes[{len(payload)}] {payload.hex()}"
    else:
        text = f"{type(payload).__name__} {{{text_format.MessageToString(payload, as_one_line=True, as_utf8=True)}}}"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# (backend, caller, RPC, source, status) -> calls, and the first input that got it.
OUTCOMES: Counter[tuple[str, str, str, str, str]] = Counter()
SAMPLES: dict[tuple[str, str, str, str, str], str] = {}


def exercise(rig: Rig, caller: str, method: str, source: str, payload: Message | bytes) -> Outcome:
    before = rig.last or snapshot(rig)
    rig.last = None  # until this call's outcome is known
    outcome = invoke(rig, method, payload, caller)
    after = snapshot(rig)
    rig.last = after
    key = (rig.backend, caller, method.rsplit("/", 1)[1], source, outcome.code.name)
    OUTCOMES[key] += 1
    SAMPLES.setdefault(key, show(payload, 200))
    if currently_in_test_context():
        event(f"{key[2]} {source}: {outcome.code.name}")  # --hypothesis-show-statistics lists these
    context = f"{method} as {caller} ({source}): {outcome.code.name} {outcome.details[:300]!r}\n{show(payload)}"
    assert outcome.code in ALLOWED[caller], context
    assert len(outcome.details) <= MAX_DETAILS, f"a {len(outcome.details)}-character message: {context}"
    assert outcome.trailer_bytes <= MAX_TRAILER, f"{outcome.trailer_bytes} bytes of trailers: {context}"
    if not decodes(method, payload):
        assert (outcome.code, outcome.field) == (INVALID, "request"), context
    if outcome.code == INVALID:
        assert outcome.field, f"INVALID_ARGUMENT must name the field at fault: {context}"
    if outcome.code != OK or method in READS:
        assert after == before, (
            f"{'refused' if outcome.code != OK else 'read'} but changed {before.changes(after)}: {context}"
        )
    elif method in AUDITED:
        added = after.tables["audit_log"][len(before.tables["audit_log"]) :]  # rows are in id order
        if method.endswith("/RegisterAgents"):  # one record per tenant the batch wrote into
            tenant_at = list(rig.tables.tables["audit_log"].columns.keys()).index("tenant_id")
            tenants = [row[tenant_at] for row in added]
            assert tenants and len(set(tenants)) == len(tenants), f"bulk audit records for {tenants}: {context}"
        else:
            assert len(added) == 1, f"an accepted write added {len(added)} audit records: {context}"
    return outcome


def requests(rig: Rig) -> st.SearchStrategy[tuple[str, str, Message | bytes]]:
    """(RPC, source, request) over every RPC: generated, mutated or corrupted on the wire."""
    gen = rig.generator

    def of(method: str) -> st.SearchStrategy[tuple[str, str, Message | bytes]]:
        seeds = rig.seeds[method]
        wire = tuple(s.SerializeToString() for s in seeds)
        sources: list[st.SearchStrategy[tuple[str, str, Message | bytes]]] = [
            st.tuples(st.just(method), st.just("generated"), gen.message(RPCS[method].input_type)),
            st.tuples(st.just(method), st.just("mutated"), st.sampled_from(seeds).flatmap(lambda s: mutated(gen, s))),
            st.tuples(st.just(method), st.just("wire"), corrupted(wire)),
        ]
        return st.one_of(sources)

    return st.one_of([of(method) for method in sorted(RPCS)])


def fuzz(rig: Rig, caller: str, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
    @given(case=requests(rig))
    def run(case: tuple[str, str, Message | bytes]) -> None:
        exercise(rig, caller, *case)  # it asserts everything

    try:
        run()
    finally:
        report(rig.backend, caller)


def report(backend: str, caller: str) -> None:
    """Write the status of each (RPC, source) to CAPREG_FUZZ_REPORT, with the first input that got it."""
    path = os.environ.get("CAPREG_FUZZ_REPORT")
    if not path:
        return
    with Path(path).open("a") as out:
        for key in sorted(k for k in OUTCOMES if k[:2] == (backend, caller)):
            fields = dict(zip(("backend", "caller", "rpc", "source", "status"), key, strict=True))
            out.write(json.dumps({**fields, "calls": OUTCOMES[key], "example": SAMPLES[key]}) + "\n")


def assert_healthy(rig: Rig) -> None:
    assert rig.admin.health()
    answer = rig.admin.discover(TEXT, tenant=ME, top_k=3)
    assert answer.explanation.plan in ("exact", "hnsw", "empty", "exact-fallback")
    assert rig.admin.list_agents(tenant=ME, page_size=1) is not None


# -- seeds ---------------------------------------------------------------------------------------------


def seed_requests(w: World, dim: int) -> dict[str, list[Message]]:
    """Valid requests for every RPC: test_auth's matrix builders (own tenant, another tenant, by id), and
    richer ones that set the fields the matrix leaves empty."""
    seeds: dict[str, list[Message]] = {method: [] for method in RPCS}
    for method, case in CASES.items():
        if method not in RPCS:  # streaming: see tests/test_streams.py
            continue
        variants = [(ME, ME, False), (OTHER, OTHER, False)] + ([(ME, "", True)] if case.by_id else [])
        for target, named, by_id in variants:
            seeds[method].append(case.build(w, target, named if case.named else "", by_id))
    for method, extra in richer_requests(w, dim).items():
        seeds[method] += extra
    assert all(seeds.values()), f"no valid request for {[m for m, s in seeds.items() if not s]}"
    return seeds


def richer_requests(w: World, dim: int) -> dict[str, list[Message]]:
    unit = [1.0] + [0.0] * (dim - 1)
    admin = w.admin
    fresh = admin.create_budget("fuzz-fresh-budget", 1.0, period="day", tenant=ME).budget  # never reserved
    empty = admin.create_budget("fuzz-empty-budget", 0.0, period="month", tenant=ME).budget  # nothing fits
    held = w.new_reservation(ME)
    page = admin.list_agents(tenant=ME, page_size=1).next_page_token
    assert page
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC).replace(year=datetime.now(UTC).year + 1))
    requirement = policy_pb2.LabelRequirement
    return {
        REG + "RegisterAgent": [
            registry_pb2.RegisterAgentRequest(
                agent=make_agent(
                    "fuzz-rich",
                    make_capability("summarize", vector=agent_pb2.Vector(values=unit)),
                    make_capability("translate", "2.0.0-beta.1", quality_prior=0.9),
                    tenant=ME,
                    labels={"team": "red", "tier": "gold"},
                    status=agent_pb2.AGENT_STATUS_DRAINING,
                    visibility=agent_pb2.VISIBILITY_SHARED,
                    shared_with=[OTHER],
                    description="A richly described agent.",
                )
            )
        ],
        REG + "RegisterAgents": [
            registry_pb2.RegisterAgentsRequest(
                agents=[
                    registry_pb2.RegisterAgentRequest(
                        agent=make_agent(
                            "fuzz-bulk-a",
                            make_capability("summarize", vector=agent_pb2.Vector(values=unit)),
                            tenant=ME,
                            labels={"team": "blue"},
                        )
                    ),
                    registry_pb2.RegisterAgentRequest(
                        agent=make_agent("fuzz-bulk-b", make_capability("translate", "2.0.0"), tenant=ME)
                    ),
                ]
            )
        ],
        REG + "ListAgents": [
            registry_pb2.ListAgentsRequest(tenant=ME, page_size=1, page_token=page),
            registry_pb2.ListAgentsRequest(
                tenant=ME,
                page_size=2,
                kinds=[agent_pb2.AGENT_KIND_AGENT],
                status=agent_pb2.AGENT_STATUS_ACTIVE,
                labels={"team": "red"},
                name_prefix=secret_of(ME),
            ),
        ],
        DISC + "Discover": [
            discovery_pb2.DiscoverRequest(
                tenant=ME,
                vector=agent_pb2.Vector(values=unit),
                top_k=3,
                filters=discovery_pb2.DiscoverFilters(
                    kinds=[agent_pb2.AGENT_KIND_AGENT],
                    tags_all=["test"],
                    tags_any=["test", "other"],
                    regions=["eu-west-1"],
                    input_modes=["text"],
                    output_modes=["text"],
                    max_cost_usd=1.0,
                    max_latency_ms=1000.0,
                    min_quality=0.1,
                    labels={"team": "red"},
                    capability_name="summarize",
                ),
                estimated_input_tokens=100,
                estimated_output_tokens=100,
                task_labels={"data_class": "pii"},
                budget_id=fresh.id,
            ),
            discovery_pb2.DiscoverRequest(tenant=ME, text=TEXT, vector_space="minilm-l6-v2", budget_id=empty.id),
        ],
        BUD + "CreateBudget": [
            budget_pb2.CreateBudgetRequest(
                budget=budget_pb2.Budget(
                    tenant=ME,
                    name="fuzz-project-budget",
                    scope=budget_pb2.BUDGET_SCOPE_PROJECT,
                    scope_id="apollo",
                    period=budget_pb2.BUDGET_PERIOD_DAY,
                    limit_usd=5.0,
                )
            )
        ],
        BUD + "UpdateBudget": [
            budget_pb2.UpdateBudgetRequest(
                budget=budget_pb2.BudgetRef(id=fresh.id, tenant=ME), limit_usd=2.0, expected_generation=1
            )
        ],
        BUD + "Reserve": [
            budget_pb2.ReserveRequest(tenant=ME, budget_id=fresh.id, amount_usd=0.5, ttl=Duration(seconds=60)),
            budget_pb2.ReserveRequest(tenant=ME, budget_id=empty.id, amount_usd=0.01),
        ],
        BUD + "Commit": [budget_pb2.CommitRequest(tenant=ME, reservation_id=held, actual_usd=0.005)],
        POL + "CreatePolicy": [
            policy_pb2.CreatePolicyRequest(
                policy=policy_pb2.Policy(
                    tenant=ME,
                    name="fuzz-rich-policy",
                    description="Keeps tools away from PII.",
                    effect=policy_pb2.POLICY_EFFECT_DENY,
                    subject=policy_pb2.PolicySubject(principals=["alice"], roles=["agent"]),
                    target=policy_pb2.PolicyTarget(
                        agent_ids=[w.seeds[ME].agent.id],
                        kinds=[agent_pb2.AGENT_KIND_TOOL],
                        tags_any=["never-used"],
                        labels=[requirement(key="team", operator=requirement.OPERATOR_IN, values=["red"])],
                        regions_any=["eu-west-1"],
                        regions_outside=["us-east-1"],
                    ),
                    condition=policy_pb2.PolicyCondition(
                        task_labels=[requirement(key="data_class", operator=requirement.OPERATOR_EXISTS)]
                    ),
                )
            )
        ],
        KEYS + "CreateKey": [
            keys_pb2.CreateKeyRequest(
                tenant=ME, name="fuzz-expiring", roles=[Role.AGENT.value, "custom-role"], expire_time=expires
            )
        ],
        AUDIT + "ListAudit": [keys_pb2.ListAuditRequest(tenant=ME, limit=10, before_id=1000)],
    }


def strings_in(message: Message) -> set[str]:
    """Every string in a message: the names, ids and tenants that reach past validation."""
    found: set[str] = set()
    for field, value in message.ListFields():
        values = list(value.items()) if is_map(field) else value if field.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                found |= strings_in(item)
            elif isinstance(item, tuple):
                found |= {part for part in item if isinstance(part, str)}
            elif isinstance(item, str):
                found.add(item)
    return found


@pytest.fixture
def rig(database_url: str, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Rig]:
    """A server with authentication on, its budget clock frozen, seeded through the API as test_auth does."""
    data = tmp_path / "data"
    with running_server(data, database_url, embedder, auth_enabled=True) as server:
        frozen = datetime.now(UTC)
        server.app.budgets._store._clock = lambda: frozen
        operator = (data / "operator.key").read_text().strip()
        with (
            CapregClient(server.target, api_key=operator, timeout=30) as admin,
            grpc.insecure_channel(server.target) as channel,
        ):
            world = World(server, server.app.engine, channel, admin)
            seed(world, ME, OTHER)
            seed(world, OTHER, ME)
            tenant_key = admin.create_key("fuzz-tenant-operator", [Role.OPERATOR.value], tenant=ME).token
            dim = server.app.serving.space.dim
            seeds = seed_requests(world, dim)
            vocabulary = set().union(*(strings_in(s) for pool in seeds.values() for s in pool))
            vocabulary |= {"default", "*", ME, OTHER, "initech", *(r.value for r in Role), "1.0.0", "minilm-l6-v2"}
            tables = MetaData()
            tables.reflect(bind=server.app.engine)
            yield Rig(
                backend=database_url.split(":", 1)[0],
                server=server,
                channel=channel,
                admin=admin,
                tokens={CLUSTER: operator, TENANT: tenant_key},
                seeds=seeds,
                generator=Generator(tuple(sorted(vocabulary)), dim),
                tables=tables,
            )


# -- the tests -----------------------------------------------------------------------------------------


def test_every_unary_rpc_is_fuzzed() -> None:
    """The RPCs come from the descriptors; each has a permission row and valid requests to mutate.
    Streaming RPCs are checked against malformed input in tests/test_streams.py."""
    assert RPCS
    streaming = {path for path, m in proto_methods().items() if m.client_streaming or m.server_streaming}
    assert set(RPCS) == set(PERMISSIONS) - streaming
    assert set(CASES) == set(RPCS) | streaming


def test_fuzz_every_rpc_as_the_cluster_operator(rig: Rig) -> None:
    fuzz(rig, CLUSTER, EXAMPLES)
    assert_healthy(rig)


def test_fuzz_every_rpc_as_a_tenant_operator(rig: Rig) -> None:
    fuzz(rig, TENANT, TENANT_EXAMPLES)
    assert_healthy(rig)


@dataclass(frozen=True)
class Found:
    """An input that once got INTERNAL, wrote on a refusal, lost its audit record, or was echoed back whole;
    and what it gets now."""

    caller: str
    method: str
    request: Message
    code: grpc.StatusCode
    field: str | None = None


def found_by_fuzzing(rig: Rig) -> list[Found]:
    zero = rig.admin.create_budget("zero-limit", 0.0, tenant=ME).budget  # no usage row yet
    agent_id = rig.admin.register_agent(make_agent("by-id", tenant=ME, status=agent_pb2.AGENT_STATUS_DRAINING)).agent.id
    bad_time = budget_pb2.Budget(tenant=ME, name="bad-time", limit_usd=1.0, create_time=Timestamp(nanos=-1))
    key = keys_pb2.CreateKeyRequest
    return [
        # CreateKey: an expire_time that no datetime can hold was INTERNAL (ValueError from ToDatetime).
        Found(
            CLUSTER,
            KEYS + "CreateKey",
            key(name="k", roles=["agent"], expire_time=Timestamp(seconds=-(2**63))),
            INVALID,
            "expire_time",
        ),
        Found(
            CLUSTER,
            KEYS + "CreateKey",
            key(name="k", roles=["agent"], expire_time=Timestamp(nanos=-1)),
            INVALID,
            "expire_time",
        ),
        # ListAudit, ListKeys: a cluster operator's tenant went to the database unchecked; NUL was INTERNAL on
        # PostgreSQL. "*" still lists the cluster operators' keys.
        Found(CLUSTER, AUDIT + "ListAudit", keys_pb2.ListAuditRequest(tenant="\x00"), INVALID, "tenant"),
        Found(CLUSTER, KEYS + "ListKeys", keys_pb2.ListKeysRequest(tenant="a\x00b"), INVALID, "tenant"),
        Found(CLUSTER, KEYS + "ListKeys", keys_pb2.ListKeysRequest(tenant="*"), OK),
        # PERMISSION_DENIED echoed the other tenant's name whole (past gRPC's 16 KiB of trailers when long).
        Found(
            TENANT,
            BUD + "ListBudgets",
            budget_pb2.ListBudgetsRequest(tenant="x" * 100_000),
            Code.PERMISSION_DENIED,
            "tenant",
        ),
        # An output-only Timestamp that JSON cannot represent: INTERNAL from the audit, after the write.
        Found(CLUSTER, BUD + "CreateBudget", budget_pb2.CreateBudgetRequest(budget=bad_time), OK),
        # NUL in an ignored field: PostgreSQL's jsonb refused the audit record, which was lost.
        Found(
            CLUSTER,
            REG + "RegisterAgent",
            registry_pb2.RegisterAgentRequest(agent=make_agent("nul", tenant=ME, id="\x00")),
            OK,
        ),
        # By id, with NUL in the ignored name: the audit record's entity_id (tenant/name/id) was refused.
        Found(
            CLUSTER,
            REG + "UpdateAgentStatus",
            registry_pb2.UpdateAgentStatusRequest(
                agent=agent_pb2.AgentRef(id=agent_id, name="\x00"),
                status=agent_pb2.AGENT_STATUS_ACTIVE,
            ),
            OK,
        ),
        # A cluster operator's bulk registration into two tenants is audited once in each (it was taken for a
        # write that added two records).
        Found(
            CLUSTER,
            REG + "RegisterAgents",
            registry_pb2.RegisterAgentsRequest(
                agents=[
                    registry_pb2.RegisterAgentRequest(agent=make_agent("bulk-in-default")),
                    registry_pb2.RegisterAgentRequest(agent=make_agent("bulk-in-acme", tenant=ME)),
                ]
            ),
            OK,
        ),
        # ReportOutcome: a capability_id with NUL went to PostgreSQL unchecked and was INTERNAL there.
        Found(
            CLUSTER,
            OUT + "ReportOutcome",
            outcome_pb2.ReportOutcomeRequest(tenant=ME, capability_id="\x00", text="summarize this", success=True),
            INVALID,
            "capability_id",
        ),
        # More than the limit, before any reservation this period: refused, yet it wrote a usage row.
        Found(
            CLUSTER,
            BUD + "Reserve",
            budget_pb2.ReserveRequest(tenant=ME, budget_id=zero.id, amount_usd=0.01),
            Code.FAILED_PRECONDITION,
        ),
    ]


def test_the_inputs_fuzzing_found(rig: Rig) -> None:
    for found in found_by_fuzzing(rig):
        outcome = exercise(rig, found.caller, found.method, "found", found.request)  # it asserts the rest
        assert (outcome.code, outcome.field) == (found.code, found.field), (found.method, outcome)
    assert_healthy(rig)


def with_nul(seed: Message) -> Iterator[Message]:
    """The seed once per string in it (fields, list items, map keys and values), that string given a NUL."""
    for path, field in enumerate(slots(seed)):
        if field[1].type != FieldDescriptor.TYPE_STRING and not is_map(field[1]):
            continue
        message = type(seed)()
        message.CopyFrom(seed)
        holder, target = slots(message)[path]
        value = getattr(holder, target.name)
        if is_map(target):
            entries = dict(value)
            if entries and isinstance(next(iter(entries.values())), str):
                first = next(iter(entries))
                assign(holder, target, {**entries, first: entries[first] + "\x00"})
                yield message
                keyed = type(seed)()
                keyed.CopyFrom(seed)
                keyed_holder, keyed_target = slots(keyed)[path]
                renamed = {(k + "\x00" if k == first else k): v for k, v in entries.items()}
                assign(keyed_holder, keyed_target, renamed)
                yield keyed
        elif target.is_repeated:
            if value:
                assign(holder, target, [value[0] + "\x00", *value[1:]])
                yield message
        else:
            setattr(holder, target.name, value[:1] + "\x00" + value[1:])
            yield message


def test_a_nul_in_any_string_of_any_valid_request(rig: Rig) -> None:
    """Each string a valid request carries, given a NUL: PostgreSQL stores none in text or jsonb, so every
    one must be refused as the field's fault, ignored, or kept out of the database, never INTERNAL."""
    calls = 0
    for method in sorted(RPCS):
        for valid in rig.seeds[method]:
            for request in with_nul(valid):
                exercise(rig, CLUSTER, method, "nul", request)  # it asserts everything
                calls += 1
    assert calls > len(RPCS)
    assert_healthy(rig)


def test_an_oversized_request_is_refused(rig: Rig) -> None:
    """Past the message-size limit (one RPC of each service: gRPC refuses it before any handler runs):
    RESOURCE_EXHAUSTED, a short message, and nothing written."""
    size = rig.server.app.settings.max_message_bytes + 1
    huge = b"\x0a" + _varint(size) + b"a" * size  # field 1, length-delimited
    for method in sorted({path.rsplit("/", 1)[0]: path for path in sorted(RPCS)}.values()):
        before = snapshot(rig)
        outcome = invoke(rig, method, huge, CLUSTER)
        assert outcome.code == Code.RESOURCE_EXHAUSTED, (method, outcome)
        assert len(outcome.details) <= MAX_DETAILS
        assert snapshot(rig) == before
    assert_healthy(rig)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
