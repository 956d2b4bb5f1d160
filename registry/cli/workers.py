"""`capreg serve --workers N`: N server processes on one port, for the CPU a single Python process cannot use.

Each worker is a whole replica (its own index, change-log follower and snapshots under
<data_dir>/workers/K) on the shared PostgreSQL, listening on the same port with SO_REUSEPORT, so the kernel
spreads connections over them; read-your-writes across them is the consistency token's job, as across any
replicas. Worker 0 starts first (it may create the first operator key, or load the demo catalog, alone);
the rest follow once it serves. A worker that dies is started again; SIGTERM or Ctrl-C stops them all
gracefully.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SERVING = "capreg serving"
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 60.0
STABLE_S = 60.0  # a worker that ran this long before dying is restarted without backoff


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Worker:
    def __init__(self, number: int, command: list[str], env: dict[str, str]):
        self.number = number
        self.command = command
        self.env = env
        self.serving = threading.Event()
        self.process: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.restart_delay_s = RESTART_DELAY_S

    def start(self) -> None:
        self.serving.clear()
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.started_at = time.monotonic()
        threading.Thread(target=self._relay, args=(self.process,), daemon=True).start()

    def _relay(self, process: subprocess.Popen[str]) -> None:
        """Its output, prefixed with its number; notes when it says it serves."""
        for line in process.stdout or ():  # keep draining whatever happens: a full pipe would block the worker
            if SERVING in line:
                self.serving.set()
            with contextlib.suppress(OSError):
                sys.stderr.write(f"[worker {self.number}] {line}")
                sys.stderr.flush()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_workers(
    count: int, host: str, port: int, data_dir: Path, serve_args: Sequence[str], metrics_port: int | None = None
) -> int:
    """Start `count` workers of `capreg serve <serve_args>` on host:port and supervise them until a signal.
    With `metrics_port` P, worker K serves its metrics on P + K (0: each on a free port)."""
    port = port or free_port(host)
    env = {**os.environ, "CAPREG_REUSE_PORT": "true", "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
    workers = []
    for number in range(count):
        worker_dir = data_dir / "workers" / str(number)
        command = [sys.executable, "-m", "registry.cli.main", "serve", *serve_args, "--host", host,
                   "--port", str(port), "--data-dir", str(worker_dir)]  # fmt: skip
        if metrics_port is not None:
            command += ["--metrics-port", str(metrics_port + number if metrics_port else 0)]
        workers.append(Worker(number, command, env))
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    first = workers[0]
    first.start()
    while not first.serving.wait(0.2):
        if stopping.is_set() or not first.alive():
            return _stop(workers, "worker 0 exited before it served" if not stopping.is_set() else "")
    key = data_dir / "workers" / "0" / "operator.key"
    if key.exists() and not (data_dir / "operator.key").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(key, data_dir / "operator.key")  # where the CLI looks for it
    for worker in workers[1:]:
        worker.start()
    for worker in workers[1:]:
        while not worker.serving.wait(0.2):
            if stopping.is_set():
                return _stop(workers, "")
            if not worker.alive():
                return _stop(workers, f"worker {worker.number} exited before it served")
    pids = ", ".join(str(w.process.pid) for w in workers if w.process is not None)
    sys.stderr.write(f"{SERVING} on {host}:{port} with {count} workers (pids {pids})\n")
    while not stopping.wait(0.5):
        for worker in workers:
            if worker.alive() or stopping.is_set():
                continue
            code = worker.process.returncode if worker.process is not None else None
            # One that ran a while is restarted at once; one that keeps dying waits longer each time.
            if time.monotonic() - worker.started_at > STABLE_S:
                worker.restart_delay_s = RESTART_DELAY_S
            sys.stderr.write(
                f"worker {worker.number} exited ({code}); starting it again in {worker.restart_delay_s:g} s\n"
            )
            if stopping.wait(worker.restart_delay_s):
                break
            worker.restart_delay_s = min(worker.restart_delay_s * 2, MAX_RESTART_DELAY_S)
            worker.start()
    return _stop(workers, "")


def _stop(workers: list[Worker], problem: str) -> int:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(30.0)
    if problem:
        sys.stderr.write(f"error: {problem}; see its output above\n")
        return 1
    return 0
