"""`capreg serve --workers 2` on PostgreSQL, as a real process tree: both workers answer on the one port
(connections spread by the kernel), a write through one is read with its token through any, a killed worker
is started again, and SIGTERM stops them all; the embedded SQLite is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from capreg.v1 import agent_pb2
from capreg_client import CapregClient

from tests import support

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"capreg serving on 127\.0\.0\.1:(\d+) with 2 workers \(pids (\d+), (\d+)\)")
WAIT_S = 180.0


class Supervisor:
    """The `capreg serve --workers 2` process, its output collected line by line."""

    def __init__(self, data_dir: Path, database_url: str):
        command = [sys.executable, "-m", "registry.cli.main", "serve", "--workers", "2", "--host", "127.0.0.1",
                   "--port", "0", "--data-dir", str(data_dir), "--database-url", database_url]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout or ():
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], after: int = 0) -> re.Match[str]:
        """The first line from index `after` on that matches, waiting for it (the process's own output)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines[after:] if (m := pattern.search(line))]
            return bool(found) or self.process.poll() is not None

        with self._changed:
            assert self._changed.wait_for(seen, WAIT_S), "".join(self.lines[-30:])
        assert found, "".join(self.lines[-30:])
        return found[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def fresh(target: str, key: str) -> CapregClient:
    """A client on a connection of its own (gRPC would otherwise share one between channels to a target)."""
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    return CapregClient(target, api_key=key, timeout=30, channel=channel)


def instances(target: str, key: str, connections: int) -> set[str]:
    """Which processes answer, over this many fresh connections."""
    found = set()
    for _ in range(connections):
        with fresh(target, key) as client:
            found.add(client.index_status().instance)
    return found


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_two_workers_share_a_port_and_a_killed_one_comes_back(fresh_pg_url: str, tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "data", fresh_pg_url)
    try:
        ready = supervisor.wait_for(READY)
        port, pids = int(ready.group(1)), {int(ready.group(2)), int(ready.group(3))}
        target = f"127.0.0.1:{port}"
        key = (tmp_path / "data" / "operator.key").read_text().strip()  # copied from worker 0 for the CLI
        answered = instances(target, key, 24)
        assert {int(i.rsplit(":", 1)[1]) for i in answered} == pids  # 2^-23 odds of all on one by chance

        vector = support.unit(np.linspace(1, 2, 384, dtype=np.float32))
        cap = agent_pb2.Capability(name="reconcile", version="1.0.0", description="reconciles",
                                   vector=agent_pb2.Vector(values=vector.tolist()))  # fmt: skip
        with CapregClient(target, api_key=key, timeout=30) as client:
            token = client.register_agent(agent_pb2.Agent(name="w", kind=agent_pb2.AGENT_KIND_TOOL,
                                                          capabilities=[cap])).consistency_token  # fmt: skip
        for _ in range(12):  # fresh connections land on both workers: each must show the write
            with fresh(target, key) as client:
                assert client.discover(vector=vector.tolist(), top_k=1, min_seq=token).matches[0].agent_name == "w"

        victim = sorted(pids)[1]
        mark = len(supervisor.lines)
        os.kill(victim, signal.SIGKILL)
        supervisor.wait_for(re.compile(r"worker \d exited \(-9\); starting it again"), after=mark)
        supervisor.wait_for(re.compile(r"\[worker \d\] .*capreg serving"), after=mark)
        answered = instances(target, key, 24)
        assert len(answered) == 2 and victim not in {int(i.rsplit(":", 1)[1]) for i in answered}
    finally:
        code = supervisor.stop()
    assert code == 0, "".join(supervisor.lines[-30:])


def test_workers_refuse_the_embedded_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "registry.cli.main", "serve", "--workers", "2", "--data-dir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "CAPREG_DATABASE_URL": ""},
    )  # fmt: skip
    assert result.returncode == 1
    assert "--workers needs a PostgreSQL database" in result.stderr
