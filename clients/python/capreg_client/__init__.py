"""Typed clients for the capreg capability registry.

from capreg_client import CapregClient
with CapregClient("127.0.0.1:50051") as client:
    for match in client.discover("translate this contract into German").matches:
        print(match.agent_name, match.score)
"""

from capreg.v1.agent_pb2 import Agent, AgentRef, Capability, Cost
from capreg.v1.discovery_pb2 import DiscoverFilters, DiscoverResponse, Match

from capreg_client.aio import AsyncCapregClient
from capreg_client.client import CapregClient
from capreg_client.errors import (
    CapregError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from capreg_client.requests import discover as discover_request

__all__ = [
    "Agent",
    "AgentRef",
    "AsyncCapregClient",
    "Capability",
    "CapregClient",
    "CapregError",
    "ConflictError",
    "Cost",
    "DiscoverFilters",
    "DiscoverResponse",
    "InvalidArgumentError",
    "Match",
    "NotFoundError",
    "UnavailableError",
    "discover_request",
]
