"""Index snapshots on disk, so a restart loads the graph instead of rebuilding it, then replays the
change log from the snapshot's watermark.

Layout, under `<data_dir>/snapshots/<space>/`:
    CURRENT                 the name of the live snapshot directory, replaced atomically
    <watermark>-<stamp>/    meta.json, vectors.npy, graph.bin, entries.json
meta.json holds the watermark, what the space was built with, the sha256 of every other file and a
checksum of its own content. entries.json (format 2) is one JSON array with a positional row per index row
(null for a free row), in the order meta.json's `entry_fields` names: one parse for the whole file, and
values that repeat (tenants, tags, timestamps, an agent's fields) are shared, not copied per row. Format 1
(entries.jsonl, an object per line) is still read, so an upgrade does not rebuild. A snapshot that is
missing, truncated, altered or made for another space is refused with a reason; the caller then rebuilds
from the stored vectors (never re-embedding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
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
from registry.index.gc_pause import paused_gc
from registry.index.hnsw import HnswGraph
from registry.index.space_index import SpaceIndex

log = logging.getLogger(__name__)
FORMAT = 2
READABLE_FORMATS = (1, 2)
CURRENT = "CURRENT"
FILES_OF_FORMAT = {1: ("vectors.npy", "graph.bin", "entries.jsonl"), 2: ("vectors.npy", "graph.bin", "entries.json")}
FILES = FILES_OF_FORMAT[FORMAT]
# The positions of a format-2 row; meta.json repeats them, and a snapshot with other fields is refused.
ENTRY_FIELDS = (
    "id", "name", "version", "description", "examples", "tags", "input_modes", "output_modes",
    "per_call_usd", "per_1k_input_tokens_usd", "per_1k_output_tokens_usd", "latency_p50_ms", "quality_prior",
    "regions", "created_at", "updated_at",
    "agent_id", "agent_name", "tenant", "kind", "endpoint", "labels", "status", "visibility", "shared_with",
    "lease_expires_at", "text_sha256",
)  # fmt: skip


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
        write_entries(target / "entries.json", index.entries)
        files = {f: file_sha256(target / f) for f in FILES}
        meta = {"format": FORMAT, "watermark": index.watermark, "rows": size, "entry_fields": list(ENTRY_FIELDS)}
        meta |= space_identity(space)
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
    with paused_gc():
        return _load(root, space, template_index)


def _load(root: Path, space: VectorSpace, template_index: SpaceIndex) -> SpaceIndex:
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
    form = meta.get("format")
    if form not in READABLE_FORMATS:
        raise SnapshotError(f"snapshot format {form!r} is not one this capreg reads ({READABLE_FORMATS})")
    checksum = meta.pop("checksum", None)
    if checksum != _meta_checksum(meta):  # an altered watermark would skip changes silently
        raise SnapshotError(f"{directory}/meta.json does not match its checksum: truncated or altered")
    for key, wanted in space_identity(space).items():
        if meta.get(key) != wanted:
            raise SnapshotError(f"the snapshot was made for {key}={meta.get(key)!r}, not {wanted!r}")
    if form == 2 and meta.get("entry_fields") != list(ENTRY_FIELDS):
        raise SnapshotError(f"the snapshot's rows hold {meta.get('entry_fields')!r}, not {list(ENTRY_FIELDS)}")
    files = meta.get("files", {})
    names = FILES_OF_FORMAT[form]
    for f in names:
        if not (directory / f).exists():
            raise SnapshotError(f"{directory / f} is missing")
    # The files are hashed in threads (hashlib lets go of the GIL) while this one parses the entries; what
    # was parsed is used only once every checksum has matched.
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="snapshot-sha256") as pool:
        sums = {f: pool.submit(file_sha256, directory / f) for f in names}
        try:
            # Mapped, not read: restore() copies it once into the index's own array. np.load would read it
            # into a second array first (4.8 s against 0.6 s for 1M vectors here).
            vectors = np.load(directory / "vectors.npy", mmap_mode="r", allow_pickle=False)
            entries = read_entries(directory / "entries.json") if form == 2 else read_entries_v1(directory)
            unparsed: Exception | None = None
        except Exception as exc:  # anything (a RecursionError from nested brackets, say): what was parsed is dropped
            unparsed = exc
        for f, digest in sums.items():
            try:
                sha256 = digest.result()
            except OSError as exc:
                raise SnapshotError(f"{directory / f} is unreadable: {exc}") from exc
            if sha256 != files.get(f):
                raise SnapshotError(f"{directory / f} does not match its checksum: truncated or altered")
    if unparsed is not None:
        raise SnapshotError(f"{directory} does not parse: {unparsed}") from unparsed
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


def write_entries(path: Path, entries: list[CatalogEntry | None]) -> None:
    """One JSON array, a row per line (so a diff or `head` of it stays readable)."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: a lone surrogate still writes
    with path.open("w", encoding="utf-8") as out:
        out.write("[")
        for i, entry in enumerate(entries):
            out.write(",\n" if i else "\n")
            out.write(dumps(entry_to_row(entry)) if entry is not None else "null")
        out.write("\n]\n")


def entry_to_row(entry: CatalogEntry) -> list[Any]:
    cap, cost = entry.capability, entry.capability.cost
    return [
        cap.id, cap.name, cap.version, cap.description, cap.examples, cap.tags, cap.input_modes, cap.output_modes,
        cost.per_call_usd, cost.per_1k_input_tokens_usd, cost.per_1k_output_tokens_usd, cap.latency_p50_ms,
        cap.quality_prior, cap.regions,
        cap.created_at.isoformat() if cap.created_at else None, cap.updated_at.isoformat() if cap.updated_at else None,
        entry.agent_id, entry.agent_name, entry.tenant, entry.kind.value, entry.endpoint, entry.labels,
        entry.status.value, entry.visibility.value, entry.shared_with,
        entry.lease_expires_at if entry.lease_expires_at != float("inf") else None, entry.text_sha256,
    ]  # fmt: skip


def read_entries(path: Path) -> list[CatalogEntry | None]:
    """Parse entries.json."""
    rows = json.loads(path.read_bytes())
    if not isinstance(rows, list):
        raise ValueError("entries.json is not a JSON array")
    return RowDecoder().decode_all(rows)


class RowDecoder:
    """Builds entries from format-2 rows, sharing equal values between rows: one tuple per distinct tag list,
    one datetime per distinct timestamp, one set of an agent's fields for all its capabilities."""

    def __init__(self) -> None:
        self._shared: dict[Any, Any] = {}
        self._times: dict[str, datetime] = {}
        self._agents: dict[str, tuple[list[Any], tuple[Any, ...]]] = {}  # agent id -> (raw, fields)

    def decode_all(self, rows: list[Any]) -> list[CatalogEntry | None]:
        decode = self.decode
        return [decode(row) if row is not None else None for row in rows]

    def _tuple(self, items: list[str]) -> tuple[str, ...]:
        value = tuple(items)
        return self._shared.setdefault(value, value)  # type: ignore[no-any-return]

    def _time(self, text: str | None) -> datetime | None:
        if text is None:
            return None
        found = self._times.get(text)
        if found is None:
            found = self._times[text] = datetime.fromisoformat(text)
        return found

    def _agent(self, row: list[Any]) -> tuple[Any, ...]:
        """(agent_id, agent_name, tenant, kind, endpoint, labels, status, visibility, shared_with, lease),
        shared with the previous row of the same agent when its agent fields are all equal."""
        raw = row[16:26]
        found = self._agents.get(row[16])
        if found is not None and found[0] == raw:
            return found[1]
        lease = raw[9]
        fields = (
            raw[0], raw[1], self._shared.setdefault(raw[2], raw[2]), _KINDS[raw[3]], raw[4], dict(raw[5]),
            _STATUSES[raw[6]], _VISIBILITIES[raw[7]], self._tuple(raw[8]),
            float(lease) if lease is not None else float("inf"),
        )  # fmt: skip
        self._agents[row[16]] = (raw, fields)
        return fields

    def decode(self, row: list[Any]) -> CatalogEntry:
        if len(row) != len(ENTRY_FIELDS):
            raise ValueError(f"a row of {len(row)} values, not {len(ENTRY_FIELDS)}")
        shared = self._tuple
        capability = Capability(
            name=row[1], version=self._shared.setdefault(row[2], row[2]), description=row[3],
            examples=tuple(row[4]), tags=shared(row[5]), input_modes=shared(row[6]), output_modes=shared(row[7]),
            cost=self._cost(row[8], row[9], row[10]), latency_p50_ms=row[11], quality_prior=row[12],
            regions=shared(row[13]), id=row[0], created_at=self._time(row[14]), updated_at=self._time(row[15]),
        )  # fmt: skip
        agent_id, name, tenant, kind, endpoint, labels, status, visibility, shared_with, lease = self._agent(row)
        return CatalogEntry(
            capability, agent_id, name, tenant, kind, endpoint, labels, status,
            None, visibility, shared_with, lease, row[26],
        )  # fmt: skip

    def _cost(self, per_call: float, per_in: float, per_out: float) -> Cost:
        key = ("cost", per_call, per_in, per_out)
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = Cost(per_call, per_in, per_out)
        return found


def read_entries_v1(directory: Path) -> list[CatalogEntry | None]:
    """Format 1: a JSON object per line."""
    lines = (directory / "entries.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry_from_json(json.loads(line)) if line != "null" else None for line in lines]


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
