"""The server process: health, reflection, deadlines, graceful shutdown, and the asyncio client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from capreg_client import AsyncCapregClient, CapregClient, CapregError, InvalidArgumentError
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import ServerThread, make_agent, make_capability


def test_health_and_reflection(demo_server: ServerThread) -> None:
    with CapregClient(demo_server.target) as client:
        assert client.health()
        assert client.health("capreg.v1.DiscoveryService")
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
    assert {"capreg.v1.RegistryService", "capreg.v1.DiscoveryService", "grpc.health.v1.Health"} <= names


def test_an_expired_deadline_is_reported_and_the_server_carries_on(demo_server: ServerThread) -> None:
    with CapregClient(demo_server.target) as client:
        with pytest.raises(CapregError) as err:
            client.discover("a task text that has never been embedded before " * 20, timeout=0.0005)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.discover("caption this photo").matches


def test_async_client_speaks_the_same_api(server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncCapregClient(server.target) as client:
            assert await client.health()
            created = await client.register_agent(make_agent("async-agent", make_capability("summarize")))
            assert created.created
            answer = await client.discover("summarize this", top_k=1)
            assert answer.matches[0].agent_name == "async-agent"
            names = [a.name async for a in client.iter_agents(page_size=1)]
            assert names == ["async-agent"]
            with pytest.raises(InvalidArgumentError) as err:
                await client.discover("x", top_k=1000)
            assert err.value.field == "top_k"

    asyncio.run(scenario())


def test_serve_answers_then_shuts_down_gracefully_on_sigterm(tmp_path: Path) -> None:
    """`capreg serve --demo` as a user runs it: authentication on with a first key written for its user,
    port 0, SIGTERM, a clean exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "registry.cli.main", "serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:  # blocks until the server reports; the test timeout bounds it
            found = re.search(r"capreg serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the server never said it was serving"
        key_file = tmp_path / "operator.key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        assert any("operator.key" in line for line in process.stderr)  # it says where the first key is
        with CapregClient(f"127.0.0.1:{port}") as anonymous:
            with pytest.raises(CapregError) as err:
                anonymous.discover("translate this")
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with CapregClient(f"127.0.0.1:{port}", api_key=key_file.read_text().strip()) as client:
            top = client.discover("translate this German supply contract into English").matches[0]
            assert top.agent_name == "polyglot-legal-translator"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
        assert (tmp_path / "capreg.db").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
