"""The registry's domain types: agents, capabilities, vector spaces and Discover queries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt

DEFAULT_TENANT = "default"
DEFAULT_QUALITY_PRIOR = 0.5
DEFAULT_ESTIMATED_TOKENS = 1000


class AgentKind(StrEnum):
    MODEL = "model"
    AGENT = "agent"
    TOOL = "tool"


class AgentStatus(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    INACTIVE = "inactive"


class Visibility(StrEnum):
    PRIVATE = "private"  # its own tenant only
    SHARED = "shared"  # its own tenant and the tenants it is shared with
    PUBLIC = "public"  # every tenant


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking. Until API keys arrive, the tenant comes from the request and the principal and
    roles from trusted metadata headers."""

    tenant: str = DEFAULT_TENANT
    principal: str = ""
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Cost:
    per_call_usd: float = 0.0
    per_1k_input_tokens_usd: float = 0.0
    per_1k_output_tokens_usd: float = 0.0

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        """Estimated price of one call with the given token counts."""
        return (
            self.per_call_usd
            + self.per_1k_input_tokens_usd * input_tokens / 1000.0
            + self.per_1k_output_tokens_usd * output_tokens / 1000.0
        )


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    version: str
    description: str = ""
    examples: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    input_modes: tuple[str, ...] = ()
    output_modes: tuple[str, ...] = ()
    cost: Cost = field(default_factory=Cost)
    latency_p50_ms: float = 0.0
    quality_prior: float = DEFAULT_QUALITY_PRIOR
    regions: tuple[str, ...] = ()
    # Input only: the caller's own embedding, and the space it belongs to ("" = serving space).
    supplied_vector: tuple[float, ...] | None = None
    supplied_vector_space: str = ""
    # Set by the store.
    id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def content(self) -> Capability:
        """The stored, caller-supplied part, for change detection (vectors are compared by hash)."""
        return replace(self, id="", created_at=None, updated_at=None, supplied_vector=None, supplied_vector_space="")


@dataclass(frozen=True, slots=True)
class Agent:
    tenant: str
    name: str
    kind: AgentKind
    endpoint: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    status: AgentStatus | None = None  # None at registration: keep the stored status, or ACTIVE
    description: str = ""
    capabilities: tuple[Capability, ...] = ()
    visibility: Visibility | None = None  # None at registration: keep the stored one, or PRIVATE
    shared_with: tuple[str, ...] = ()
    # None at registration: keep the stored lease; 0: no lease (never expires); else seconds between heartbeats.
    lease_ttl_s: float | None = None
    # Set by the store.
    id: str = ""
    generation: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    lease_expires_at: datetime | None = None  # None: no lease


@dataclass(frozen=True, slots=True)
class AgentDocument:
    """The document an agent was imported from: an A2A Agent Card or an MCP server.json, as JSON text."""

    format: str  # "a2a-0.3", "a2a-1.0" or "mcp-server"
    document: str


@dataclass(frozen=True, slots=True)
class AgentRef:
    """Names an agent by id, or by tenant and name."""

    id: str = ""
    tenant: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class VectorSpace:
    """One way of embedding capabilities: a model, its revision, a text template, a dimension.

    Lifecycle: building -> ready -> serving -> ready (replaced) ... -> retired; failed from building.
    One space serves at a time; a Discover may pin any space that has an index."""

    name: str
    model: str
    model_revision: str
    weights_sha256: str
    template: str
    dim: int
    metric: str = "cosine"
    state: str = "serving"
    id: int = 0
    created_at: datetime | None = None
    ready_at: datetime | None = None
    serving_at: datetime | None = None
    retired_at: datetime | None = None
    failed_at: datetime | None = None
    previous_serving_id: int | None = None  # what `rollback` returns to
    shadow_fraction: float = 0.0  # of text Discovers also run here, for comparison only
    error: str = ""  # why it failed


class SpaceState(StrEnum):
    BUILDING = "building"
    READY = "ready"
    SERVING = "serving"
    RETIRED = "retired"
    FAILED = "failed"


LIVE_SPACE_STATES = (SpaceState.BUILDING, SpaceState.READY, SpaceState.SERVING)  # have an index; get new vectors


@dataclass(frozen=True, slots=True)
class ListAgentsQuery:
    tenant: str = DEFAULT_TENANT
    page_size: int = 50
    page_token: str = ""
    kinds: tuple[AgentKind, ...] = ()
    status: AgentStatus | None = None
    labels: dict[str, str] = field(default_factory=dict)
    name_prefix: str = ""


@dataclass(frozen=True, slots=True)
class DiscoverFilters:
    kinds: tuple[AgentKind, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    input_modes: tuple[str, ...] = ()
    output_modes: tuple[str, ...] = ()
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    min_quality: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    capability_name: str = ""


@dataclass(frozen=True, slots=True)
class DiscoverQuery:
    tenant: str = DEFAULT_TENANT
    text: str | None = None
    vector: Sequence[float] | None = None
    vector_space: str = ""
    top_k: int = 5
    filters: DiscoverFilters = field(default_factory=DiscoverFilters)
    estimated_input_tokens: int = DEFAULT_ESTIMATED_TOKENS
    estimated_output_tokens: int = DEFAULT_ESTIMATED_TOKENS
    task_labels: dict[str, str] = field(default_factory=dict)
    budget_id: str = ""
    principal: str = ""
    roles: frozenset[str] = frozenset()
    min_seq: int = 0  # answer only once the index reflects this consistency token
    cost_preference: float = 0.0  # 0: quality only; 1: cost only
    latency_preference: float = 0.0  # weight of speed; cost_preference + latency_preference <= 1
    exploration_rate: float = 0.0  # probability of trying the least-tried of the top_k first

    @property
    def caller(self) -> Caller:
        return Caller(self.tenant, self.principal, self.roles)


@dataclass(frozen=True, slots=True)
class ScoreTerm:
    name: str
    value: float
    weight: float


@dataclass(frozen=True, slots=True)
class Match:
    agent_id: str
    agent_name: str
    tenant: str
    kind: AgentKind
    endpoint: str
    labels: dict[str, str]
    capability: Capability
    similarity: float
    score: float
    estimated_cost_usd: float
    score_terms: tuple[ScoreTerm, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    candidates_total: int
    candidates_allowed: int
    plan: str
    timings_ms: dict[str, float]
    exclusions: dict[str, int]
    hnsw_ef: int = 0
    hnsw_rounds: int = 0


@dataclass(frozen=True, slots=True)
class DiscoverResult:
    matches: tuple[Match, ...]
    explanation: Explanation
    vector_space: str
    watermark: int
    discover_id: str = ""  # names the task for ReportOutcome on this server


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One capability with the agent attributes Discover needs, as the index holds it."""

    capability: Capability
    agent_id: str
    agent_name: str
    tenant: str
    kind: AgentKind
    endpoint: str
    labels: dict[str, str]
    status: AgentStatus
    vector: npt.NDArray[np.float32] | None = None  # None: only attributes changed
    visibility: Visibility = Visibility.PRIVATE
    shared_with: tuple[str, ...] = ()
    lease_expires_at: float = math.inf  # epoch seconds; Discover leaves the row out from then on
    text_sha256: str = ""  # of the embedded text: a follower re-reads the vector only when this changes


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """What one committed write did to one vector space's catalog, at change sequence `seq`."""

    seq: int
    upserts: tuple[CatalogEntry, ...] = ()
    removed: tuple[str, ...] = ()  # capability ids


@dataclass(frozen=True, slots=True)
class WriteResult:
    agent: Agent | None
    seq: int  # 0 when nothing changed
    change: CatalogChange
    created: bool = False
    observed_seq: int = 0  # the newest change when an unchanged write read the state it returns

    @property
    def changed(self) -> bool:
        return self.seq != 0

    @property
    def token(self) -> int:
        """The consistency token: Discover(min_seq=token) on any replica sees this write's state."""
        return self.seq or self.observed_seq
