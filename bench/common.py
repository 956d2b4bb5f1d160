"""Helpers shared by benchmarks: a real `capreg serve` in its own process, throwaway databases,
latency statistics and a description of the machine, so every benchmark measures the same way."""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
SERVING_LINE = re.compile(r"capreg serving\s+on\s+([\w.:\[\]-]+):(\d+)\s+\((\d+)\s+capabilities")


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latency percentiles in milliseconds over `n` calls."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ns: Sequence[int] | npt.NDArray[np.int64]) -> LatencyStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        if ms.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(int(ms.size), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.max()))

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


class ServerProcess:
    """`capreg serve --port 0` as a child process: the production entry point, with its own GIL, so
    the load generator does not share an interpreter with the server."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        start_timeout_s: float = 180.0,
        log_level: str = "WARNING",
    ):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "server.log"
        command = [
            sys.executable,
            "-c",
            "from registry.cli.main import main; main()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            log_level,
        ]
        if database_url:
            command += ["--database-url", database_url]
        # A wide COLUMNS keeps rich from wrapping the "serving on" line we parse.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "1000", "PYTHONUNBUFFERED": "1"}
        env.pop("CAPREG_DATABASE_URL", None)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.pid = self.process.pid
        self.port, self.capabilities_at_start = self._wait_until_serving(start_timeout_s)
        self.target = f"127.0.0.1:{self.port}"
        # Authentication is on, as in production: the first start wrote a cluster-operator key here.
        key_file = data_dir / "operator.key"
        self.api_key = key_file.read_text().strip() if key_file.exists() else None

    def _wait_until_serving(self, timeout_s: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            found = SERVING_LINE.search(text)
            if found:
                return int(found.group(2)), int(found.group(3))
            if self.process.poll() is not None:
                raise RuntimeError(f"capreg serve exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"capreg serve did not start in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful drain, as in production), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def scratch_dir(prefix: str = "capreg-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def _psycopg_url(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


@contextmanager
def throwaway_pg_database(server_url: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server that `server_url` reaches, migrated to head and dropped
    afterwards, so a benchmark never reads or changes the contents of the database the URL names."""
    from sqlalchemy import create_engine, text

    from registry.store import migrate
    from registry.store.engine import make_engine

    if not server_url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ValueError(
            f"--database-url must be a postgresql:// URL, got {server_url.split('://', maxsplit=1)[0]}://..."
        )
    name = f"capreg_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(_psycopg_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = server_url.rpartition("/")
    url = f"{base}/{name}"
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redact(url: str) -> str:
    """A URL fit for a report: no password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def machine() -> dict[str, Any]:
    """What the numbers were measured on; they mean little without it."""
    import grpc

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "loadavg_1m_at_start": round(load[0], 2),
    }


def write_marked_section(docs: Path, start: str, end: str, section: str) -> None:
    """Replace a benchmark's section between its markers (`section` includes them), or append it: the rest
    of the page belongs to other benchmarks."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    docs.write_text(text)
