"""A private, throwaway PostgreSQL cluster for fault tests: stop it, kill it, restart it, without touching
the shared instance the rest of the suite uses.

initdb into a fresh temporary directory (as the `postgres` OS user when we are root, since initdb refuses
root), trust authentication, listening on a free TCP port of 127.0.0.1 only, fsync on. The binaries are
found on PATH, in CAPREG_TEST_PG_BIN, or under /usr/lib/postgresql/<version>/bin (the newest)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

StopMode = Literal["smart", "fast", "immediate"]
START_TIMEOUT_S = 60


def _bin_dir() -> Path:
    configured = os.environ.get("CAPREG_TEST_PG_BIN")
    if configured:
        return Path(configured)
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
        reverse=True,
    )
    if not versions:
        raise RuntimeError(
            "no PostgreSQL binaries (pg_ctl, initdb) on PATH or under /usr/lib/postgresql; set CAPREG_TEST_PG_BIN"
        )
    return versions[0].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgInstance:
    """One private cluster. `url` is a postgresql:// URL to its `postgres` database as user postgres."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="capreg-pg-"))
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.running = False
        try:
            self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _pg(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        command = [*self._as_user, str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start and wait until it accepts connections (pg_ctl -w)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=100"
        )
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        self.running = True

    def stop(self, mode: StopMode = "fast") -> None:
        """fast: roll back sessions and shut down cleanly; immediate: quit at once, recover at next start."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(START_TIMEOUT_S), "stop")
        self.running = False

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop it if it runs (immediately: it is thrown away) and remove every file."""
        if self.running:
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._quit_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _quit_postmaster(self) -> None:
        """SIGQUIT (immediate shutdown) to this cluster's own postmaster, found by its pid file."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)


def started() -> PgInstance:
    """A new private cluster, started; nothing is left behind when it cannot start."""
    instance = PgInstance()
    try:
        instance.start()
    except BaseException:
        instance.cleanup()
        raise
    return instance
