"""A flame graph of the server's Discover-by-vector hot path: `capreg serve` as a child process, closed-loop
Discover load from this process, and py-spy sampling the server meanwhile (it needs ptrace: run as root or
with CAP_SYS_PTRACE). Writes docs/img/discover_flame.svg and prints where the samples went, by frame.

    .venv/bin/python bench/profile_discover.py                    # 2,000 capabilities, 15 s of load
    .venv/bin/python bench/profile_discover.py --seconds 5 --out /tmp/flame.svg
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from capreg.v1 import agent_pb2
from capreg_client import AsyncCapregClient, CapregClient

if __package__ in (None, ""):  # run as `python bench/profile_discover.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, ServerProcess, scratch_dir

DIM = 384


Rows = npt.NDArray[np.float32]


def unit_rows(count: int, rng: np.random.Generator) -> Rows:
    rows = rng.standard_normal((count, DIM)).astype(np.float32)
    unit: Rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


def register(target: str, api_key: str | None, count: int, rng: np.random.Generator) -> None:
    with CapregClient(target, timeout=60, api_key=api_key) as client:
        for a, vector in enumerate(unit_rows(count, rng)):
            cap = agent_pb2.Capability(
                name="work", version="1.0.0", description="works", vector=agent_pb2.Vector(values=vector.tolist())
            )
            client.register_agent(agent_pb2.Agent(name=f"a{a}", kind=agent_pb2.AGENT_KIND_TOOL, capabilities=[cap]))


async def load(target: str, api_key: str | None, queries: Rows, seconds: float, concurrency: int) -> int:
    calls = 0
    deadline = time.perf_counter() + seconds
    async with AsyncCapregClient(target, timeout=30, api_key=api_key) as client:

        async def caller(offset: int) -> None:
            nonlocal calls
            i = offset
            while time.perf_counter() < deadline:
                await client.discover(vector=queries[i % len(queries)].tolist(), top_k=5)
                calls += 1
                i += concurrency

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capabilities", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "discover_flame.svg")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    with scratch_dir() as scratch, ServerProcess(scratch / "server") as server:
        register(server.target, server.api_key, args.capabilities, rng)
        raw = scratch / "profile.txt"
        spy = [sys.executable.replace("python", "py-spy"), "record", "--pid", str(server.pid), "--duration",
               str(int(args.seconds)), "--rate", "200", "--nonblocking"]  # fmt: skip
        recorder = subprocess.Popen([*spy, "--format", "raw", "-o", str(raw)], stderr=subprocess.DEVNULL)
        calls = asyncio.run(load(server.target, server.api_key, unit_rows(512, rng), args.seconds, args.concurrency))
        recorder.wait(timeout=args.seconds + 60)
        stacks = [
            (stack, int(count))
            for stack, count in (line.rsplit(" ", 1) for line in raw.read_text().splitlines() if line.strip())
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write_svg(stacks, args.out)
    total = sum(n for _, n in stacks) or 1
    by_frame: collections.Counter[str] = collections.Counter()
    for stack, count in stacks:
        for frame in set(stack.split(";")):
            by_frame[frame] += count
    print(f"{calls} Discovers in {args.seconds:g} s ({calls / args.seconds:.0f}/s), {total} samples of the server")
    for frame, count in by_frame.most_common(40):
        print(f"{100 * count / total:5.1f}%  {frame}")


def _write_svg(stacks: list[tuple[str, int]], out: Path) -> None:
    """A minimal icicle graph of the collapsed stacks (no external flamegraph tool is available here)."""
    root: dict[str, tuple[int, dict]] = {}  # type: ignore[type-arg]

    def add(node: dict, frames: list[str], count: int) -> None:  # type: ignore[type-arg]
        if not frames:
            return
        total, children = node.get(frames[0], (0, {}))
        node[frames[0]] = (total + count, children)
        add(children, frames[1:], count)

    for stack, count in stacks:
        add(root, stack.split(";"), count)
    width, row = 1600.0, 16
    grand = sum(total for total, _ in root.values()) or 1
    rects: list[str] = []
    depth_max = 0

    def draw(node: dict, x: float, depth: int) -> None:  # type: ignore[type-arg]
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        for name, (total, children) in sorted(node.items(), key=lambda kv: -kv[1][0]):
            w = width * total / grand
            if w >= 0.5:
                label = name if len(name) * 7 < w else name[: max(int(w / 7) - 1, 0)]
                hue = 20 + (hash(name.split(" ")[0]) % 40)
                rects.append(
                    f"<g><title>{_esc(name)} ({100 * total / grand:.1f}%)</title>"
                    f'<rect x="{x:.1f}" y="{depth * row}" width="{w:.1f}" height="{row - 1}" '
                    f'fill="hsl({hue},80%,60%)"/><text x="{x + 2:.1f}" y="{depth * row + 12}" '
                    f'font-size="11" font-family="monospace">{_esc(label)}</text></g>'
                )
                draw(children, x, depth + 1)
            x += w

    draw(root, 0.0, 0)
    height = (depth_max + 1) * row
    out.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}">' + "".join(rects) + "</svg>"
    )


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    main()
