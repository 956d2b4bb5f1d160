"""Small file helpers shared by the model and snapshot code: checksums, and fsync so a rename survives a
crash."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Failure = Callable[[str], Exception]  # makes the caller's own error from a message


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a file just created or renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_object(directory: Path, name: str, what: str, error: Failure, hint: str = "") -> dict[str, Any]:
    """`directory/name` parsed as a JSON object, or `error(message)` saying what is wrong with it: missing
    (there is no `what` there), unreadable, or not an object. `hint`: what to do about it."""
    path = directory / name
    tail = f"; {hint}" if hint else ""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"no {what} at {directory} ({name} is missing){tail}") from exc
    except (OSError, ValueError) as exc:
        raise error(f"{path} is unreadable ({exc}){tail}") from exc
    if not isinstance(value, dict):
        raise error(f"{path} is not a JSON object{tail}")
    return value


def read_bytes(path: Path, error: Failure, hint: str) -> bytes:
    """The file's bytes, or `error(message)` naming the file and what to do."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or exc}); {hint}") from exc
