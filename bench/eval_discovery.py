"""Outcome-aware routing measured on public data, through the gRPC API of a `capreg serve` child process.

MetaTool's 199 tools are registered (one agent, one capability each); the 6,196 labelled queries are split
70/30 with a fixed seed. Held-out top-1/top-5 are measured through Discover (descriptions only, the cold
start); then each training query is discovered and its outcomes are reported through ReportOutcome (success
for the labelled tool; failure for the returned top-1 when it was wrong); then held-out top-1/top-5 are
measured again. Writes docs/evaluation.md (not in --smoke mode).

MetaTool: github.com/HowieHwong/MetaTool (MIT License), Huang et al., "MetaTool Benchmark for Large Language
Models: Deciding Whether to Use Tools and Which to Use", arXiv 2310.03128; see ../shared/datasets.

    .venv/bin/python bench/eval_discovery.py            # every query (a few minutes on two cores)
    .venv/bin/python bench/eval_discovery.py --smoke    # 40 tools, 300 queries
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

from capreg_client import CapregClient

if __package__ in (None, ""):  # run as `python bench/eval_discovery.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, ServerProcess, scratch_dir
from bench.compare_spaces import DATA, agent_name, tool_agent

SEED = 7
TRAIN_SHARE = 0.7
LATER_SECTIONS = "\n## Routing"  # where the sections of other benchmarks begin


def accuracy(client: CapregClient, queries: list[tuple[str, str]]) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of Discover on (query, agent name) pairs."""
    top1 = top5 = 0
    for text, expected in queries:
        names = [m.agent_name for m in client.discover(text, top_k=5).matches]
        top1 += bool(names) and names[0] == expected
        top5 += expected in names
    return top1 / len(queries), top5 / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="A small run that checks the pipeline works.")
    parser.add_argument("--data", type=Path, default=DATA, help="The MetaTool folder (tools.json, queries_dev.csv).")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation.md")
    args = parser.parse_args()
    tools: dict[str, str] = json.loads((args.data / "tools.json").read_text())
    with (args.data / "queries_dev.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if args.smoke:
        kept = set(list(tools)[:40])
        tools = {k: v for k, v in tools.items() if k in kept}
        rows = [r for r in rows if r["tool"] in kept][:300]
    labelled = [(r["query"], agent_name(r["tool"])) for r in rows]
    random.Random(SEED).shuffle(labelled)
    cut = int(TRAIN_SHARE * len(labelled))
    train, held_out = labelled[:cut], labelled[cut:]
    with (
        scratch_dir() as scratch,
        ServerProcess(scratch / "server") as server,
        CapregClient(server.target, api_key=server.api_key, timeout=60) as client,
    ):
        started = time.perf_counter()
        capability = {}
        for name, description in tools.items():
            agent = client.register_agent(tool_agent(name, description)).agent
            capability[agent.name] = agent.capabilities[0].id
        registered_s = time.perf_counter() - started
        started = time.perf_counter()
        before = accuracy(client, held_out)
        print(f"held-out before outcomes: top-1 {before[0]:.3f}, top-5 {before[1]:.3f}")
        # The training tasks as a cold registry answers them, then their outcomes.
        top1 = [client.discover(text, top_k=1).matches[0].agent_name for text, _ in train]
        reported = 0
        for (text, expected), answered in zip(train, top1, strict=True):
            if answered != expected:
                client.report_outcome(capability[answered], success=False, text=text)
                reported += 1
            client.report_outcome(capability[expected], success=True, text=text)
            reported += 1
        trained_s = time.perf_counter() - started
        after = accuracy(client, held_out)
        print(f"held-out after {reported} outcomes: top-1 {after[0]:.3f}, top-5 {after[1]:.3f}")
    print(f"registered {len(tools)} tools in {registered_s:.1f} s; measured and reported in {trained_s:.1f} s")
    if args.smoke:
        assert after[0] >= before[0], "outcomes made Discover worse"
        return
    # Keep the sections other benchmarks write after this one (bench/eval_routing.py's).
    existing = args.out.read_text() if args.out.exists() else ""
    later = existing[existing.index(LATER_SECTIONS) :] if LATER_SECTIONS in existing else ""
    body = render(len(tools), len(train), len(held_out), reported, before, after)
    args.out.write_text(body + ("\n" + later if later else ""))
    print(f"wrote {args.out}")


def render(
    tools: int, train: int, held_out: int, reported: int, before: tuple[float, float], after: tuple[float, float]
) -> str:
    return f"""# Discover with outcomes, measured

`bench/eval_discovery.py` starts `capreg serve` (SQLite, authentication on, the bundled all-MiniLM-L6-v2)
and does everything through the gRPC API:

1. registers MetaTool's {tools} tools (one agent, one capability each, text `{{name}}: {{description}}`
   from the tool's description);
2. splits the {train + held_out} labelled queries of `queries_dev.csv` 70/30 with a fixed seed ({SEED}):
   {train} training queries, {held_out} held out;
3. measures top-1 and top-5 accuracy of Discover on the held-out queries (descriptions only: the cold start);
4. discovers each training query, and reports its outcomes with ReportOutcome (the task as text): success
   for the labelled tool, and failure for the returned top-1 when it was another tool ({reported} outcomes);
5. measures the held-out queries again.

| held-out queries ({held_out}) | top-1 | top-5 |
|---|---|---|
| descriptions only (no outcomes) | {before[0]:.3f} | {before[1]:.3f} |
| with {reported} training outcomes | {after[0]:.3f} | {after[1]:.3f} |

How Discover uses outcomes (`registry/service/outcomes.py`, `registry/service/discovery_service.py`): the
10 past outcomes of the same tenant in the same vector space nearest to the task (cosine between task
vectors) vote, each weighted w = max(similarity, 0)^4; a capability's vote is
(sum of w * (2*score - 1) over its outcomes among them + m * (2*rate - 1)) / (sum of all their w + m), in
[-1, 1], where rate is its overall success rate for the tenant (shrunk toward 0.5) and m = 0.5^4 (the rate
weighs as much as one outcome at similarity 0.5); capabilities with no outcome among them vote 0. The
candidates are the usual top k+10 by similarity plus the capabilities that voted (when the constraints
allow them), ranked by 0.9 * similarity + 0.1 * quality_prior + 0.8 * vote. With no outcomes the ranking is exactly the
descriptions' one. Every Discover explains the terms (`learned_quality` carries the vote).

Reproduce: `.venv/bin/python bench/eval_discovery.py` (`--smoke` for a small run).

Data: MetaTool (github.com/HowieHwong/MetaTool, MIT License): Huang et al., "MetaTool Benchmark for Large
Language Models: Deciding Whether to Use Tools and Which to Use", arXiv 2310.03128, as shipped in
`../shared/datasets/metatool`.

Caveats: the training and held-out queries come from one distribution (MetaTool's queries for the same
199 tools), and the outcomes are perfect labels; real outcomes are noisier and arrive for the tools that
were tried, so expect a smaller gain, growing with the outcomes a tenant reports.
"""


if __name__ == "__main__":
    main()
