"""Input rules, checked before anything is written. Every failure names the field at fault."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from registry.domain.errors import InvalidArgument
from registry.domain.models import (
    DEFAULT_TENANT,
    Agent,
    AgentRef,
    Capability,
    DiscoverFilters,
    DiscoverQuery,
    ListAgentsQuery,
    Visibility,
)

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}\Z")
TENANT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?\Z")
PRINTABLE_RE = re.compile(r"^[^\x00-\x1f\x7f-\x9f]+\Z")  # no C0 or C1 control characters
# semver.org's reference expression; ASCII so that \d is 0-9 only.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z",
    re.ASCII,
)

MAX_VERSION = 128  # the width of capabilities.version
MAX_DESCRIPTION = 4000
MAX_EXAMPLES = 20
MAX_EXAMPLE_LEN = 500
MAX_LIST_ITEMS = 32
MAX_CAPABILITIES = 64
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_ENDPOINT = 2048
MAX_MODE_LEN = 255  # a MIME type may be this long
MAX_PRICE_USD = 1_000_000.0
MAX_LATENCY_MS = 86_400_000.0
MAX_QUERY_TEXT = 4096
MAX_TOP_K = 100
MAX_PAGE_SIZE = 500
MAX_TOKENS = 10_000_000


def _shown(value: str, limit: int = 64) -> str:
    """`value` quoted for an error, cut short: gRPC refuses trailers over 16 KiB, so echo no unbounded input."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def tenant_or_default(tenant: str, field: str) -> str:
    if tenant == "":
        return DEFAULT_TENANT
    if not TENANT_RE.match(tenant):
        raise InvalidArgument(field, "a tenant is 1-63 lowercase letters, digits or '-', not at either end")
    return tenant


def check_name(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not NAME_RE.match(value):
        raise InvalidArgument(
            field,
            "must be 1-128 characters of letters, digits and . _ : / @ -, starting with a letter or digit",
        )


MAX_ID_LEN = 64


def check_id(value: str, field: str) -> None:
    """Ids are opaque; an unknown one is NotFound, but an empty or absurd one is the caller's mistake."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_LEN or not PRINTABLE_RE.match(value) or value != value.strip():
        raise InvalidArgument(field, f"is not an id: 1-{MAX_ID_LEN} printable characters")


def check_text(value: str, field: str, max_len: int, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(field, f"is {len(value)} characters long; the limit is {max_len}")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")


def check_tokens(values: Sequence[str], field: str, max_len: int = 64, max_items: int = MAX_LIST_ITEMS) -> None:
    """Tags, regions and modes: short printable strings, no surrounding spaces."""
    if len(values) > max_items:
        raise InvalidArgument(field, f"has {len(values)} items; the limit is {max_items}")
    for i, value in enumerate(values):
        if not (0 < len(value) <= max_len and PRINTABLE_RE.match(value)) or value != value.strip():
            raise InvalidArgument(
                f"{field}[{i}]",
                f"must be 1-{max_len} printable characters without leading or trailing spaces",
            )


def check_number(value: float, field: str, low: float, high: float) -> None:
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field, "must be a finite number")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}, got {value:g}")


def check_labels(labels: Mapping[str, str], field: str) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(field, f"has {len(labels)} labels; the limit is {MAX_LABELS}")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            raise InvalidArgument(f"{field}[{_shown(key)}]", "a label key is 1-63 letters, digits or . _ / -")
        check_text(value, f"{field}[{key!r}]", MAX_LABEL_VALUE)


def check_capability(cap: Capability, field: str) -> None:
    check_name(cap.name, f"{field}.name")
    if len(cap.version) > MAX_VERSION or not SEMVER_RE.match(cap.version):
        raise InvalidArgument(f"{field}.version", f"{_shown(cap.version)} is not a semantic version such as 1.2.0")
    check_text(cap.description, f"{field}.description", MAX_DESCRIPTION, required=True)
    if len(cap.examples) > MAX_EXAMPLES:
        raise InvalidArgument(f"{field}.examples", f"has {len(cap.examples)} items; the limit is {MAX_EXAMPLES}")
    for i, example in enumerate(cap.examples):
        check_text(example, f"{field}.examples[{i}]", MAX_EXAMPLE_LEN, required=True)
    check_tokens(cap.tags, f"{field}.tags")
    check_tokens(cap.input_modes, f"{field}.input_modes", MAX_MODE_LEN)
    check_tokens(cap.output_modes, f"{field}.output_modes", MAX_MODE_LEN)
    check_tokens(cap.regions, f"{field}.regions")
    check_number(cap.cost.per_call_usd, f"{field}.cost.per_call_usd", 0.0, MAX_PRICE_USD)
    check_number(cap.cost.per_1k_input_tokens_usd, f"{field}.cost.per_1k_input_tokens_usd", 0.0, MAX_PRICE_USD)
    check_number(cap.cost.per_1k_output_tokens_usd, f"{field}.cost.per_1k_output_tokens_usd", 0.0, MAX_PRICE_USD)
    check_number(cap.latency_p50_ms, f"{field}.latency_p50_ms", 0.0, MAX_LATENCY_MS)
    check_number(cap.quality_prior, f"{field}.quality_prior", 0.0, 1.0)
    if cap.supplied_vector_space:
        check_name(cap.supplied_vector_space, f"{field}.vector.space")


def validate_agent(agent: Agent, field: str = "agent") -> None:
    """Raise InvalidArgument for the first rule the agent breaks."""
    check_name(agent.name, f"{field}.name")
    check_text(agent.endpoint, f"{field}.endpoint", MAX_ENDPOINT)
    check_text(agent.description, f"{field}.description", MAX_DESCRIPTION)
    check_labels(agent.labels, f"{field}.labels")
    if len(agent.shared_with) > MAX_LIST_ITEMS:
        raise InvalidArgument(
            f"{field}.shared_with", f"has {len(agent.shared_with)} tenants; the limit is {MAX_LIST_ITEMS}"
        )
    for i, tenant in enumerate(agent.shared_with):
        if not TENANT_RE.match(tenant):
            raise InvalidArgument(
                f"{field}.shared_with[{i}]", "is not a tenant name (1-63 lowercase letters, digits, '-')"
            )
    if agent.shared_with and agent.visibility is not Visibility.SHARED:
        raise InvalidArgument(f"{field}.shared_with", "only a SHARED agent is shared; set visibility to SHARED")
    if not agent.capabilities:
        raise InvalidArgument(f"{field}.capabilities", "an agent needs at least one capability")
    if len(agent.capabilities) > MAX_CAPABILITIES:
        raise InvalidArgument(
            f"{field}.capabilities", f"has {len(agent.capabilities)} items; the limit is {MAX_CAPABILITIES}"
        )
    seen: set[tuple[str, str]] = set()
    for i, cap in enumerate(agent.capabilities):
        check_capability(cap, f"{field}.capabilities[{i}]")
        if cap.key in seen:
            raise InvalidArgument(
                f"{field}.capabilities[{i}]",
                f"{cap.name} {cap.version} appears twice; (name, version) is unique",
            )
        seen.add(cap.key)


def check_generation(value: int, field: str) -> None:
    if value < 0:
        raise InvalidArgument(field, "must be 0 (any) or a positive generation")


def validate_ref(ref: AgentRef, field: str = "agent") -> AgentRef:
    """An id, or a tenant (default when empty) and a name."""
    if ref.id:
        check_text(ref.id, f"{field}.id", 64)
        return AgentRef(id=ref.id, tenant=tenant_or_default(ref.tenant, f"{field}.tenant") if ref.tenant else "")
    if not ref.name:
        raise InvalidArgument(field, "give an id, or a name (and a tenant unless it is 'default')")
    check_name(ref.name, f"{field}.name")
    return AgentRef(tenant=tenant_or_default(ref.tenant, f"{field}.tenant"), name=ref.name)


def validate_list_query(query: ListAgentsQuery) -> None:
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 (default 50) and {MAX_PAGE_SIZE}")
    check_labels(query.labels, "labels")
    check_text(query.name_prefix, "name_prefix", 128)
    check_text(query.page_token, "page_token", 1024)


def validate_filters(filters: DiscoverFilters, field: str = "filters") -> None:
    for name, values in (
        ("tags_all", filters.tags_all),
        ("tags_any", filters.tags_any),
        ("regions", filters.regions),
    ):
        check_tokens(values, f"{field}.{name}")
    check_tokens(filters.input_modes, f"{field}.input_modes", MAX_MODE_LEN)
    check_tokens(filters.output_modes, f"{field}.output_modes", MAX_MODE_LEN)
    if filters.max_cost_usd is not None:
        check_number(filters.max_cost_usd, f"{field}.max_cost_usd", 0.0, MAX_PRICE_USD)
    if filters.max_latency_ms is not None:
        check_number(filters.max_latency_ms, f"{field}.max_latency_ms", 0.0, MAX_LATENCY_MS)
    if filters.min_quality is not None:
        check_number(filters.min_quality, f"{field}.min_quality", 0.0, 1.0)
    check_labels(filters.labels, f"{field}.labels")
    if filters.capability_name:
        check_name(filters.capability_name, f"{field}.capability_name")


def validate_vector(vector: npt.NDArray[np.float32], dim: int, field: str) -> None:
    if vector.shape != (dim,):
        raise InvalidArgument(field, f"has {vector.size} values; the vector space has dimension {dim}")
    finite = np.isfinite(vector)
    if not finite.all():
        raise InvalidArgument(field, f"value {int(np.argmin(finite))} is not finite")
    if not np.any(vector):
        raise InvalidArgument(field, "must not be the zero vector")
    with np.errstate(over="ignore", under="ignore"):
        norm = float(np.linalg.norm(vector))  # in float32, as the index normalizes it
    if not 0.0 < norm < math.inf:
        raise InvalidArgument(field, "its length overflows or underflows float32; scale it towards unit length")


def validate_discover(query: DiscoverQuery) -> None:
    """Checks everything but the vector's dimension, which needs the space."""
    tenant_or_default(query.tenant, "tenant")
    if query.text is None and query.vector is None:
        raise InvalidArgument("query", "give either text or vector")
    if query.text is not None:
        check_text(query.text, "text", MAX_QUERY_TEXT, required=True)
    if not 1 <= query.top_k <= MAX_TOP_K:
        raise InvalidArgument("top_k", f"must be between 1 and {MAX_TOP_K} (0 means 5)")
    if query.vector_space:
        check_name(query.vector_space, "vector_space")
    for name, value in (
        ("estimated_input_tokens", query.estimated_input_tokens),
        ("estimated_output_tokens", query.estimated_output_tokens),
    ):
        if not 0 <= value <= MAX_TOKENS:
            raise InvalidArgument(name, f"must be between 0 and {MAX_TOKENS}")
    validate_filters(query.filters)
    check_labels(query.task_labels, "task_labels")
    check_number(query.cost_preference, "cost_preference", 0.0, 1.0)
    check_number(query.latency_preference, "latency_preference", 0.0, 1.0)
    if query.cost_preference + query.latency_preference > 1.0 + 1e-9:
        raise InvalidArgument("latency_preference", "cost_preference + latency_preference must be at most 1")
    check_number(query.exploration_rate, "exploration_rate", 0.0, 1.0)
    if query.min_seq < 0:
        raise InvalidArgument("min_seq", "must be a consistency token a write returned, or 0")
