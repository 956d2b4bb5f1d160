"""The grpc.aio server: our services, health checking, reflection and the error interceptor."""

from __future__ import annotations

import grpc
from capreg.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    discovery_pb2,
    discovery_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    outcome_pb2,
    outcome_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from registry.config import ServerLimits, TlsFiles
from registry.service.admin_service import AdminService
from registry.service.budget_service import BudgetService
from registry.service.discovery_service import DiscoveryService
from registry.service.interop_service import InteropService
from registry.service.key_service import KeyService
from registry.service.outcomes import OutcomeService
from registry.service.policy_service import PolicyService
from registry.service.registry_service import RegistryService
from registry.service.watch import DiscoverWatches
from registry.transport.admin_servicer import AdminServicer
from registry.transport.auth import AuthInterceptor
from registry.transport.budget_servicer import BudgetServicer
from registry.transport.errors import ErrorInterceptor
from registry.transport.key_servicer import AuditServicer, KeyServicer
from registry.transport.limits import RateLimiter
from registry.transport.outcome_servicer import OutcomeServicer
from registry.transport.policy_servicer import PolicyServicer
from registry.transport.servicers import DiscoveryServicer, RegistryServicer
from registry.transport.telemetry_interceptor import TelemetryInterceptor

SERVICE_NAMES = (
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    outcome_pb2.DESCRIPTOR.services_by_name["OutcomeService"].full_name,
)


class GrpcServer:
    def __init__(
        self,
        registry: RegistryService,
        discovery: DiscoveryService,
        policies: PolicyService,
        budgets: BudgetService,
        keys: KeyService,
        admin: AdminService,
        outcomes: OutcomeService,
        watches: DiscoverWatches | None = None,
        interop: InteropService | None = None,
        authenticate: bool = True,
        limits: ServerLimits | None = None,
        reuse_port: bool = False,
    ):
        limits = limits or ServerLimits()
        self.server = grpc.aio.server(
            # The error interceptor is outermost, so authentication failures map like any other error.
            interceptors=[
                TelemetryInterceptor(),
                ErrorInterceptor(max_call_s=limits.max_call_s),
                AuthInterceptor(
                    keys if authenticate else None, RateLimiter(limits.calls_per_s_per_key, limits.burst_per_key)
                ),
            ],
            options=[
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.max_send_message_length", limits.max_message_bytes),
                # Off unless asked (`serve --workers`): a second server on a taken port must fail, not share it.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry, interop), self.server)
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(DiscoveryServicer(discovery, watches), self.server)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(policies), self.server)
        budget_pb2_grpc.add_BudgetServiceServicer_to_server(BudgetServicer(budgets), self.server)
        keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(keys), self.server)
        keys_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(keys), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(admin), self.server)
        outcome_pb2_grpc.add_OutcomeServiceServicer_to_server(OutcomeServicer(outcomes), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )

    async def start(self, host: str, port: int, tls: TlsFiles | None = None, *, ready: bool = True) -> int:
        """Bind (with TLS, and client certificates when a client CA is given) and start; returns the
        bound port (useful when `port` is 0)."""
        if tls is None:
            bound = self.server.add_insecure_port(f"{host}:{port}")
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.key.read_bytes(), tls.cert.read_bytes())],
                root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
                require_client_auth=tls.client_ca is not None,
            )
            bound = self.server.add_secure_port(f"{host}:{port}", credentials)
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}; is another server using it? Pick one with --port")
        await self.server.start()
        await self.set_ready(ready)
        return bound

    async def set_ready(self, ready: bool) -> None:
        """What gRPC health says: NOT_SERVING keeps load balancers away (e.g. until the index caught up)."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Say NOT_SERVING first so load balancers drain us, then finish in-flight calls."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def wait(self) -> None:
        await self.server.wait_for_termination()
