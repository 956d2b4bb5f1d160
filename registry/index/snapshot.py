"""Index snapshots on disk, so a restart loads the graph instead of rebuilding it, then replays the
change log from the snapshot's watermark.

Layout, under `<data_dir>/snapshots/<space>/`:
    CURRENT                 the name of the live snapshot directory, replaced atomically
    <watermark>-<stamp>/    meta.json, vectors.npy, graph.bin, entries.jsonl
meta.json holds the watermark, what the space was built with, the sha256 of every other file and a
checksum of its own content. A snapshot that is missing, truncated, altered or made for another space is
refused with a reason; the caller then rebuilds from the stored vectors (never re-embedding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from registry.domain.models import (
    AgentKind,
    AgentStatus,
    Capability,
    CatalogEntry,
    Cost,
    VectorSpace,
    Visibility,
)
from registry.files import file_sha256, fsync_dir, fsync_file
from registry.index.hnsw import HnswGraph
from registry.index.space_index import SpaceIndex

log = logging.getLogger(__name__)
FORMAT = 1
CURRENT = "CURRENT"
FILES = ("vectors.npy", "graph.bin", "entries.jsonl")


class SnapshotError(Exception):
    """Why a snapshot cannot be used."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    watermark: int
    rows: int
    bytes: int
    seconds: float


def space_identity(space: VectorSpace) -> dict[str, Any]:
    """What must match between a snapshot and the space it is loaded into."""
    return {
        "space_id": space.id,
        "space": space.name,
        "model": space.model,
        "weights_sha256": space.weights_sha256,
        "template": space.template,
        "dim": space.dim,
    }


def write(index: SpaceIndex, space: VectorSpace, root: Path, keep: int = 2) -> SnapshotInfo:
    """Write the index as a new snapshot and make it CURRENT. The index must not change meanwhile
    (the caller holds the follower's lock); searches may go on."""
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{index.watermark:012d}-{time.time_ns()}"
    target = root / (name + ".partial")
    target.mkdir()
    try:
        size = index.size
        np.save(target / "vectors.npy", index.vectors[:size], allow_pickle=False)
        index.graph.save(str(target / "graph.bin"))
        with (target / "entries.jsonl").open("w", encoding="utf-8") as out:
            for entry in index.entries:
                out.write(json.dumps(entry_to_json(entry) if entry is not None else None, separators=(",", ":")))
                out.write("\n")
        files = {f: file_sha256(target / f) for f in FILES}
        meta = {"format": FORMAT, "watermark": index.watermark, "rows": size} | space_identity(space)
        meta["files"] = files
        meta["checksum"] = _meta_checksum(meta)
        (target / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in (*FILES, "meta.json"):
            fsync_file(target / f)
        final = root / name
        target.rename(final)
        _replace_text(root / CURRENT, name)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _prune(root, keep=name, count=keep)
    total = sum((final / f).stat().st_size for f in (*FILES, "meta.json"))
    return SnapshotInfo(final, index.watermark, size, total, time.perf_counter() - started)


def load(root: Path, space: VectorSpace, template_index: SpaceIndex) -> SpaceIndex:
    """The CURRENT snapshot as an index with the parameters of `template_index`; SnapshotError says why not."""
    pointer = root / CURRENT
    if not pointer.exists():
        raise SnapshotError(f"no snapshot in {root}")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise SnapshotError(f"{pointer} is unreadable: {exc}") from exc
    if name in ("", ".", "..") or Path(name).name != name:
        raise SnapshotError(f"{pointer} does not name a snapshot directory: {name[:100]!r}")
    directory = root / name
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{directory}/meta.json is unreadable: {exc}") from exc
    if not isinstance(meta, dict):
        raise SnapshotError(f"{directory}/meta.json is not a JSON object")
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {meta.get('format')!r} is not {FORMAT}")
    checksum = meta.pop("checksum", None)
    if checksum != _meta_checksum(meta):  # an altered watermark would skip changes silently
        raise SnapshotError(f"{directory}/meta.json does not match its checksum: truncated or altered")
    for key, wanted in space_identity(space).items():
        if meta.get(key) != wanted:
            raise SnapshotError(f"the snapshot was made for {key}={meta.get(key)!r}, not {wanted!r}")
    files = meta.get("files", {})
    for f in FILES:
        path = directory / f
        if not path.exists():
            raise SnapshotError(f"{path} is missing")
        if file_sha256(path) != files.get(f):
            raise SnapshotError(f"{path} does not match its checksum: truncated or altered")
    try:
        vectors = np.load(directory / "vectors.npy", allow_pickle=False)
        lines = (directory / "entries.jsonl").read_text(encoding="utf-8").splitlines()
        entries = [entry_from_json(json.loads(line)) if line != "null" else None for line in lines]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{directory} does not parse: {exc}") from exc
    rows = int(meta["rows"])
    if vectors.shape != (rows, space.dim) or len(entries) != rows:
        raise SnapshotError(f"{directory} holds {vectors.shape} vectors and {len(entries)} entries, not {rows} rows")
    free = {row for row, entry in enumerate(entries) if entry is None}
    try:
        graph = HnswGraph.load(str(directory / "graph.bin"), space.dim, template_index.hnsw_params, free)
    except RuntimeError as exc:  # hnswlib cannot read it (e.g. written by another version)
        raise SnapshotError(f"{directory}/graph.bin does not load: {exc}") from exc
    return SpaceIndex.restore(
        space.dim,
        template_index.hnsw_params,
        template_index.planner,
        graph=graph,
        vectors=vectors,
        entries=entries,
        watermark=int(meta["watermark"]),
    )


def entry_to_json(entry: CatalogEntry) -> dict[str, Any]:
    cap = entry.capability
    return {
        "agent_id": entry.agent_id,
        "agent_name": entry.agent_name,
        "tenant": entry.tenant,
        "kind": entry.kind.value,
        "endpoint": entry.endpoint,
        "labels": entry.labels,
        "status": entry.status.value,
        "visibility": entry.visibility.value,
        "shared_with": list(entry.shared_with),
        "lease_expires_at": entry.lease_expires_at if entry.lease_expires_at != float("inf") else None,
        "text_sha256": entry.text_sha256,
        "cap": {
            "id": cap.id,
            "name": cap.name,
            "version": cap.version,
            "description": cap.description,
            "examples": list(cap.examples),
            "tags": list(cap.tags),
            "input_modes": list(cap.input_modes),
            "output_modes": list(cap.output_modes),
            "cost": [cap.cost.per_call_usd, cap.cost.per_1k_input_tokens_usd, cap.cost.per_1k_output_tokens_usd],
            "latency_p50_ms": cap.latency_p50_ms,
            "quality_prior": cap.quality_prior,
            "regions": list(cap.regions),
            "created_at": cap.created_at.isoformat() if cap.created_at else None,
            "updated_at": cap.updated_at.isoformat() if cap.updated_at else None,
        },
    }


# Enum members by value: a dict lookup, where Enum(value) costs a call through the metaclass per field.
_KINDS = {kind.value: kind for kind in AgentKind}
_STATUSES = {status.value: status for status in AgentStatus}
_VISIBILITIES = {visibility.value: visibility for visibility in Visibility}


def entry_from_json(data: dict[str, Any]) -> CatalogEntry:
    cap = data["cap"]
    capability = Capability(
        id=cap["id"],
        name=cap["name"],
        version=cap["version"],
        description=cap["description"],
        examples=tuple(cap["examples"]),
        tags=tuple(cap["tags"]),
        input_modes=tuple(cap["input_modes"]),
        output_modes=tuple(cap["output_modes"]),
        cost=Cost(*cap["cost"]),
        latency_p50_ms=cap["latency_p50_ms"],
        quality_prior=cap["quality_prior"],
        regions=tuple(cap["regions"]),
        created_at=datetime.fromisoformat(cap["created_at"]) if cap["created_at"] else None,
        updated_at=datetime.fromisoformat(cap["updated_at"]) if cap["updated_at"] else None,
    )
    lease = data["lease_expires_at"]
    return CatalogEntry(
        capability=capability,
        agent_id=data["agent_id"],
        agent_name=data["agent_name"],
        tenant=data["tenant"],
        kind=_KINDS[data["kind"]],
        endpoint=data["endpoint"],
        labels=dict(data["labels"]),
        status=_STATUSES[data["status"]],
        visibility=_VISIBILITIES[data["visibility"]],
        shared_with=tuple(data["shared_with"]),
        lease_expires_at=float(lease) if lease is not None else float("inf"),
        text_sha256=data["text_sha256"],
    )


def _meta_checksum(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _replace_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _prune(root: Path, keep: str, count: int) -> None:
    """Keep the newest `count` snapshots (CURRENT among them); remove the rest and any partial ones."""
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")), reverse=True)
    for old in [p for p in done if p.name != keep][count - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in root.glob("*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
