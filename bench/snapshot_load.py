"""Snapshot load time per capability, in this process: format 2 (one JSON array of positional rows, shared
values) against format 1 (a JSON object per line), each with Python's cyclic garbage collector on and
paused. Format 1 with the collector on is the baseline, measured in the same run on the same index. It stands
in for the loader before format 2 but is read by today's loader, which maps vectors.npy and hashes in
threads, so it understates the whole change.

    python bench/snapshot_load.py                       # 100,000 capabilities, writes docs/benchmarks.md
    python bench/snapshot_load.py --smoke               # 2,000, writes no docs (tests/test_bench_smoke.py)

The index is bench/memory_profile.py's catalog (ten capabilities per agent, two regions, one tag), built
with a cheap HNSW graph (ef_construction 40): the graph's quality does not change how long it takes to load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):  # run as `python bench/snapshot_load.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, machine, write_marked_section
from bench.memory_profile import DIM, catalog
from registry.domain.models import CatalogEntry, VectorSpace
from registry.files import file_sha256
from registry.index import snapshot
from registry.index.hnsw import HnswParams
from registry.index.space_index import SpaceIndex

DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- snapshot-load:start -->", "<!-- snapshot-load:end -->"
SPACE = VectorSpace("bench", "model", "rev", "0" * 64, "{name}", DIM, id=1)
VARIANTS = (  # (format, collector paused)
    (1, False),  # the baseline: format 1, read by today's loader
    (1, True),
    (2, False),
    (2, True),  # what a start does now
)


def entry_to_json(entry: CatalogEntry) -> dict[str, Any]:
    """A row as format 1 wrote it."""
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


def as_format_1(directory: Path) -> None:
    """Rewrite a format-2 snapshot directory the way format 1 laid it out: entries.jsonl, an object per line."""
    entries = snapshot.read_entries(directory / "entries.json")
    with (directory / "entries.jsonl").open("w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry_to_json(entry) if entry is not None else None, separators=(",", ":")) + "\n")
    (directory / "entries.json").unlink()
    meta = json.loads((directory / "meta.json").read_text())
    del meta["checksum"], meta["entry_fields"]
    meta["format"] = 1
    meta["files"] = {f: file_sha256(directory / f) for f in snapshot.FILES_OF_FORMAT[1]}
    meta["checksum"] = snapshot._meta_checksum(meta)
    (directory / "meta.json").write_text(json.dumps(meta))


@contextlib.contextmanager
def collector(paused: bool) -> Iterator[None]:
    """The load as it is (collector paused), or with the pause taken out."""
    if paused:
        yield
        return
    with mock.patch.object(snapshot, "paused_gc", contextlib.nullcontext):
        yield


def time_loads(root: Path, paused: bool, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        with collector(paused):
            started = time.perf_counter()
            loaded = snapshot.load(root, SPACE, SpaceIndex(DIM))
            seconds.append(time.perf_counter() - started)
        del loaded
    return seconds


def run(count: int, repeat: int) -> dict[str, Any]:
    print(f"building an index of {count:,} capabilities ...", file=sys.stderr)
    index = SpaceIndex(DIM, HnswParams(ef_construction=40))
    index.bulk_load(catalog(count), watermark=1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="capreg-snapshot-bench-") as scratch:
        roots = {form: Path(scratch) / f"format{form}" for form in (1, 2)}
        written = {form: snapshot.write(index, SPACE, roots[form]) for form in (1, 2)}
        as_format_1(written[1].path)
        entries_bytes = {
            1: (written[1].path / "entries.jsonl").stat().st_size,
            2: (written[2].path / "entries.json").stat().st_size,
        }
        del index
        for form, paused in VARIANTS:
            print(f"loading format {form}, collector {'paused' if paused else 'on'} ...", file=sys.stderr)
            seconds = time_loads(roots[form], paused, repeat)
            results.append(
                {
                    "format": form,
                    "gc_paused": paused,
                    "seconds": [round(s, 3) for s in seconds],
                    "median_s": round(statistics.median(seconds), 3),
                    "us_per_capability": round(statistics.median(seconds) / count * 1e6, 1),
                    "entries_bytes_per_capability": round(entries_bytes[form] / count, 1),
                }
            )
        snapshot_write_s = round(written[2].seconds, 2)
    baseline = results[0]["median_s"]
    for r in results:
        r["speedup_vs_format1_gc_on"] = round(baseline / r["median_s"], 2)
    return {
        "config": {"capabilities": count, "repeat": repeat, "dim": DIM},
        "machine": machine(),
        "snapshot_write_s": snapshot_write_s,
        "results": results,
    }


def write_docs(summary: dict[str, Any], docs: Path) -> None:
    c, rows = summary["config"], summary["results"]
    lines = [
        START,
        f"## Snapshot load at {c['capabilities']:,} capabilities",
        "",
        "Generated by `bench/snapshot_load.py`, which rewrites only this section. One index, written once in",
        "format 2 and once more rewritten as format 1; each variant loaded "
        f"{c['repeat']} times in this process (median shown).",
        "Format 1 with the collector on is the baseline of the same run. It stands in for the loader before format 2",
        "but is read by today's loader (vectors mapped, files hashed in threads), so it understates the whole change.",
        "",
        "| entries file | cyclic GC | load, median s | µs per capability | entries bytes per capability | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = "format 2 (entries.json)" if r["format"] == 2 else "format 1 (entries.jsonl)"
        lines.append(
            f"| {name} | {'paused' if r['gc_paused'] else 'on'} | {r['median_s']:.2f} | {r['us_per_capability']:.1f} "
            f"| {r['entries_bytes_per_capability']:,.0f} | {r['speedup_vs_format1_gc_on']:.2f}x |"
        )
    m = summary["machine"]
    lines += [
        "",
        "A load covers everything `snapshot.load` does: the sha256 of the three files, the entries, the vectors,",
        "the hnswlib graph and SpaceIndex.restore (columns, postings, row maps). The cold start of a whole server,",
        "with the interpreter, torch and the model, is in the scale section above.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        f"1-minute load average {m['loadavg_1m_at_start']} at start.",
        "",
        "```",
        "python bench/snapshot_load.py --capabilities " + str(c["capabilities"]),
        "```",
        END,
        "",
    ]
    write_marked_section(docs, START, END, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", type=int, default=100_000, help="rows in the index (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="loads per variant (default 3)")
    parser.add_argument("--smoke", action="store_true", help="2,000 rows, one load each, no docs")
    parser.add_argument("--no-docs", action="store_true", help="print the JSON summary only")
    parser.add_argument("--docs", type=Path, default=DOCS, help="Markdown to write the section into")
    args = parser.parse_args(argv)
    count, repeat = (2000, 1) if args.smoke else (args.capabilities, args.repeat)
    if count < 10 or repeat < 1:
        parser.error("need --capabilities >= 10 and --repeat >= 1")
    summary = run(count, repeat)
    if not (args.smoke or args.no_docs):
        write_docs(summary, args.docs)
        print(f"wrote {args.docs}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
