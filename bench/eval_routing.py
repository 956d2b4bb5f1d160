"""Cost-aware model routing measured on public data, through the gRPC API of a `capreg serve` child process.

Two model agents are registered, Mixtral-8x7B-Instruct and GPT-4-1106-preview, with their list prices. The
MMLU prompts of RouteLLM (each with both models' correctness) are split 70/30 per subject with a fixed seed.
For every training prompt one outcome per model is reported through ReportOutcome (success = that model
answered correctly; cost from the price). Then, for each value of Discover's `cost_preference`, every
held-out prompt is discovered and routed to Discover's top-1: accuracy and cost of that routing, against
always-Mixtral, always-GPT-4, the random mixtures between them (the straight line) and the oracle. Writes
the routing section of docs/evaluation.md and docs/img/routing_mmlu.png (not in --smoke mode).

Data: RouteLLM (github.com/lm-sys/RouteLLM, Apache License 2.0), Ong et al., "RouteLLM: Learning to Route
LLMs with Preference Data", arXiv 2406.18665; its MMLU responses joined in ../shared/datasets/routellm-mmlu.

    .venv/bin/python bench/eval_routing.py              # all 14,042 prompts (several minutes on two cores)
    .venv/bin/python bench/eval_routing.py --limit 3000 # a seeded sample of 3,000 prompts
    .venv/bin/python bench/eval_routing.py --smoke      # 300 prompts, 5 values of the knob, no docs
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from capreg.v1 import agent_pb2
from capreg_client import AsyncCapregClient

if __package__ in (None, ""):  # run as `python bench/eval_routing.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, ServerProcess, scratch_dir

DATA = REPO.parent / "shared" / "datasets" / "routellm-mmlu" / "mmlu_responses.csv"
SEED = 7
TRAIN_SHARE = 0.7
CHARS_PER_TOKEN = 4  # input tokens estimated as ceil(len(prompt) / 4)
OUTPUT_TOKENS = 4  # an MMLU answer is a letter; a few tokens with the end of turn
SMOKE_PROMPTS = 300
MAX_TEXT = 4096  # the API's limit on a task's text; the model reads far less (256 tokens)
PREFERENCES = (0.0, 0.02, 0.05, 0.08, 0.1, 0.13, 0.16, 0.2, 0.24, 0.28, 0.32, 0.36, 0.4, 0.5, 0.7, 1.0)
SMOKE_PREFERENCES = (0.0, 0.2, 0.4, 0.6, 1.0)
DESCRIPTION = "General-purpose instruction-following chat model: answers questions on any subject."
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # the agent's name
    column: str  # its correctness column in the CSV
    label: str  # for the table
    per_1k_input_usd: float
    per_1k_output_usd: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.per_1k_input_usd + output_tokens * self.per_1k_output_usd) / 1000.0


# List prices, per 1k tokens: see PRICES_NOTE.
MIXTRAL = Model("mixtral-8x7b-instruct", "mixtral_8x7b_correct", "Mixtral-8x7B-Instruct", 0.0006, 0.0006)
GPT4 = Model("gpt-4-1106-preview", "gpt_4_1106_correct", "GPT-4-1106-preview", 0.01, 0.03)
MODELS = (MIXTRAL, GPT4)
PRICES_NOTE = """\
- Mixtral-8x7B-Instruct: $0.0006 per 1k input and per 1k output tokens, Together AI's serverless price
  for `mistralai/Mixtral-8x7B-Instruct-v0.1` ($0.60 per million tokens, in and out alike) as listed on
  together.ai/pricing in 2024 (the price RouteLLM's paper also uses for Mixtral);
- GPT-4-1106-preview: $0.01 per 1k input and $0.03 per 1k output tokens, OpenAI's published price for
  `gpt-4-1106-preview` (GPT-4 Turbo) on openai.com/pricing from its release in November 2023 through 2024."""


@dataclass(frozen=True, slots=True)
class Prompt:
    subject: str
    text: str
    correct: dict[str, bool]  # agent name -> answered correctly
    input_tokens: int

    def cost(self, model: Model) -> float:
        return model.cost(self.input_tokens, OUTPUT_TOKENS)


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    accuracy: float
    cost_usd: float  # total over the held-out prompts
    gpt4_share: float  # of prompts routed to GPT-4


def load(path: Path) -> list[Prompt]:
    with path.open(newline="") as f:
        return [
            Prompt(
                subject=row["subject"],
                text=row["prompt"][:MAX_TEXT],
                correct={m.name: row[m.column] == "True" for m in MODELS},
                input_tokens=max(1, math.ceil(len(row["prompt"]) / CHARS_PER_TOKEN)),
            )
            for row in csv.DictReader(f)
        ]


def split(prompts: list[Prompt], seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """70/30 within each subject, seeded."""
    rng = random.Random(seed)
    by_subject: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_subject.setdefault(p.subject, []).append(p)
    train: list[Prompt] = []
    held_out: list[Prompt] = []
    for subject in sorted(by_subject):
        group = by_subject[subject]
        rng.shuffle(group)
        cut = round(TRAIN_SHARE * len(group))
        train += group[:cut]
        held_out += group[cut:]
    return train, held_out


def model_agent(model: Model) -> agent_pb2.Agent:
    cost = agent_pb2.Cost(
        per_1k_input_tokens_usd=model.per_1k_input_usd, per_1k_output_tokens_usd=model.per_1k_output_usd
    )
    cap = agent_pb2.Capability(name="chat", version="1.0.0", description=DESCRIPTION, cost=cost)
    return agent_pb2.Agent(name=model.name, kind=agent_pb2.AGENT_KIND_MODEL, capabilities=[cap])


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]], in_flight: int) -> list[T]:
    """Run the calls with at most `in_flight` at a time; results in order."""
    gate = asyncio.Semaphore(in_flight)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


def point(name: str, held_out: list[Prompt], chosen: Sequence[Model]) -> Point:
    n = len(held_out)
    right = sum(p.correct[m.name] for p, m in zip(held_out, chosen, strict=True))
    cost = sum(p.cost(m) for p, m in zip(held_out, chosen, strict=True))
    return Point(name, right / n, cost, sum(m is GPT4 for m in chosen) / n)


def oracle(held_out: list[Prompt]) -> Point:
    """Mixtral when it is right (or both are wrong), else GPT-4."""
    return point(
        "oracle",
        held_out,
        [GPT4 if p.correct[GPT4.name] and not p.correct[MIXTRAL.name] else MIXTRAL for p in held_out],
    )


def embed_prompts(prompts: Sequence[Prompt]) -> dict[str, list[float]]:
    """Each prompt's vector, embedded once here with the model the server serves (the same weights and code
    as its text path), so that sweeping the knob does not embed every held-out prompt once per value."""
    from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path

    embedder = SentenceTransformerEmbedder(bundled_model_path(), cache_size=0)
    texts = sorted({p.text for p in prompts})
    vectors: dict[str, list[float]] = {}
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        for text, vector in zip(chunk, embedder.embed(chunk), strict=True):
            vectors[text] = [float(x) for x in vector]
        print(f"embedded {len(vectors)}/{len(texts)} prompts", file=sys.stderr, flush=True)
    return vectors


def line_accuracy(cost: float, cheap: Point, strong: Point) -> float:
    """Accuracy of the random mixture of the two models that costs `cost`."""
    share = (cost - cheap.cost_usd) / (strong.cost_usd - cheap.cost_usd)
    return cheap.accuracy + share * (strong.accuracy - cheap.accuracy)


async def run(
    args: argparse.Namespace, train: list[Prompt], held_out: list[Prompt]
) -> tuple[list[Point], dict[str, float]]:
    preferences = SMOKE_PREFERENCES if args.smoke else PREFERENCES
    timings: dict[str, float] = {}
    with scratch_dir() as scratch, ServerProcess(scratch / "server") as server:
        async with AsyncCapregClient(server.target, api_key=server.api_key, timeout=120) as client:
            started = time.perf_counter()
            capability: dict[str, str] = {}
            for model in MODELS:
                agent = (await client.register_agent(model_agent(model))).agent
                capability[agent.name] = agent.capabilities[0].id
            by_capability = {capability[m.name]: m for m in MODELS}

            vectors = embed_prompts([*train, *held_out])
            timings["embed_s"] = time.perf_counter() - started

            def report(p: Prompt, m: Model) -> Callable[[], Awaitable[object]]:
                return lambda: client.report_outcome(
                    capability[m.name],
                    success=p.correct[m.name],
                    vector=vectors[p.text],
                    input_tokens=p.input_tokens,
                    output_tokens=OUTPUT_TOKENS,
                    cost_usd=p.cost(m),
                )

            started = time.perf_counter()
            await bounded([report(p, m) for p in train for m in MODELS], args.in_flight)
            timings["report_s"] = time.perf_counter() - started
            print(f"reported {2 * len(train)} outcomes in {timings['report_s']:.1f} s", file=sys.stderr)

            def route(p: Prompt, preference: float) -> Callable[[], Awaitable[Model]]:
                async def call() -> Model:
                    found = await client.discover(
                        vector=vectors[p.text],
                        top_k=1,
                        estimated_input_tokens=p.input_tokens,
                        estimated_output_tokens=OUTPUT_TOKENS,
                        cost_preference=preference,
                    )
                    return by_capability[found.matches[0].capability.id]

                return call

            points = []
            started = time.perf_counter()
            for preference in preferences:
                chosen = await bounded([route(p, preference) for p in held_out], args.in_flight)
                points.append(point(f"cost_preference={preference:g}", held_out, chosen))
                print(json.dumps(as_dict(points[-1])), file=sys.stderr)
            timings["discover_s"] = time.perf_counter() - started
            timings["discovers"] = float(len(preferences) * len(held_out))
    return points, timings


def as_dict(p: Point) -> dict[str, object]:
    return {
        "name": p.name,
        "accuracy": round(p.accuracy, 4),
        "cost_usd": round(p.cost_usd, 4),
        "gpt4_share": round(p.gpt4_share, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_PROMPTS} prompts, a few knob values, no docs.")
    parser.add_argument("--limit", type=int, default=0, help="A seeded sample of this many prompts (0: all).")
    parser.add_argument("--in-flight", type=int, default=16, help="Concurrent calls.")
    parser.add_argument("--data", type=Path, default=DATA, help="RouteLLM's MMLU responses, joined (CSV).")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation.md")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "routing_mmlu.png")
    args = parser.parse_args()
    prompts = load(args.data)
    total = len(prompts)
    limit = SMOKE_PROMPTS if args.smoke else args.limit
    if limit and limit < total:
        prompts = random.Random(SEED).sample(prompts, limit)
    train, held_out = split(prompts, SEED)
    print(f"{len(prompts)} prompts: {len(train)} training, {len(held_out)} held out", file=sys.stderr)
    started = time.perf_counter()
    routed, timings = asyncio.run(run(args, train, held_out))
    timings["total_s"] = time.perf_counter() - started
    cheap = point("always Mixtral", held_out, [MIXTRAL] * len(held_out))
    strong = point("always GPT-4", held_out, [GPT4] * len(held_out))
    best = oracle(held_out)
    summary = {
        "prompts": len(prompts),
        "train": len(train),
        "held_out": len(held_out),
        "baselines": [as_dict(p) for p in (cheap, strong, best)],
        "routed": [
            {**as_dict(p), "lift_over_line": round(p.accuracy - line_accuracy(p.cost_usd, cheap, strong), 4)}
            for p in routed
        ],
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    print(json.dumps(summary, indent=1))
    if args.smoke:
        assert all(0.0 <= p.accuracy <= 1.0 for p in routed)
        assert routed[-1].gpt4_share == 0.0, "cost_preference=1 must route everything to the cheaper model"
        return
    plot(args.plot, routed, cheap, strong, best, len(held_out))
    write_section(
        args.out, render(routed, cheap, strong, best, len(prompts), total, len(train), len(held_out), timings)
    )
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)


def plot(path: Path, routed: list[Point], cheap: Point, strong: Point, best: Point, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_1k = 1000.0 / n  # cost per 1,000 prompts
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [cheap.cost_usd * per_1k, strong.cost_usd * per_1k], [cheap.accuracy, strong.accuracy],
        "--", color="grey", label="random mixtures (the straight line)",
    )  # fmt: skip
    ordered = sorted(routed, key=lambda p: p.cost_usd)
    ax.plot(
        [p.cost_usd * per_1k for p in ordered],
        [p.accuracy for p in ordered],
        "o-",
        label="Discover top-1, cost_preference swept",
    )
    ax.plot([cheap.cost_usd * per_1k], [cheap.accuracy], "s", color="tab:green", label="always Mixtral-8x7B")
    ax.plot([strong.cost_usd * per_1k], [strong.accuracy], "s", color="tab:red", label="always GPT-4-1106")
    ax.plot([best.cost_usd * per_1k], [best.accuracy], "*", markersize=12, color="tab:purple", label="oracle")
    ax.set_xlabel("cost per 1,000 held-out prompts (USD, list prices)")
    ax.set_ylabel("accuracy on held-out MMLU prompts")
    ax.set_title(f"Routing MMLU between Mixtral-8x7B and GPT-4 ({n} held-out prompts)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTION = "## Routing between two models by cost and quality (RouteLLM MMLU)"


def write_section(out: Path, section: str) -> None:
    """Replace this script's section of the document (everything from its heading on), keeping the rest."""
    text = out.read_text() if out.exists() else ""
    kept = text.split(SECTION, 1)[0].rstrip("\n")
    out.write_text((kept + "\n\n" if kept else "") + section)


def render(
    routed: list[Point], cheap: Point, strong: Point, best: Point, n: int, total: int, train: int, held_out: int,
    timings: dict[str, float],
) -> str:  # fmt: skip
    per_1k = 1000.0 / held_out
    rows = []
    for p in [cheap, *routed, strong, best]:
        lift = p.accuracy - line_accuracy(p.cost_usd, cheap, strong)
        rows.append(f"| {p.name} | {p.accuracy:.4f} | {p.cost_usd * per_1k:.3f} | {p.gpt4_share:.3f} | {lift:+.4f} |")
    table = "\n".join(rows)
    command = ".venv/bin/python bench/eval_routing.py" + ("" if n == total else f" --limit {n}")
    interior = [p for p in routed if 0.0 < p.gpt4_share < 1.0]
    above = sum(p.accuracy > line_accuracy(p.cost_usd, cheap, strong) for p in interior)
    sample = "every prompt" if n == total else f"a seeded sample of {n} of the {total} prompts"
    return f"""{SECTION}

`bench/eval_routing.py` starts `capreg serve` (SQLite, authentication on, the bundled all-MiniLM-L6-v2)
and does everything through the gRPC API, on {sample}:

1. registers two model agents, `{MIXTRAL.name}` and `{GPT4.name}`, one capability each with the same
   description (so the descriptions do not prefer either) and their list prices as `cost`;
2. splits the prompts 70/30 within each of MMLU's 57 subjects, with a fixed seed ({SEED}): {train} training
   prompts, {held_out} held out;
3. reports, for every training prompt and both models, an outcome with ReportOutcome (the prompt as text,
   success = that model answered it correctly, tokens and cost as below): {2 * train} outcomes;
4. for each value of `cost_preference`, discovers every held-out prompt (with its estimated tokens) and
   routes it to Discover's top-1; accuracy is that model's correctness on the prompt, cost its price.

Tokens: input ceil(len(prompt) / {CHARS_PER_TOKEN}), output {OUTPUT_TOKENS} (an answer letter), for the outcomes,
for Discover's estimate and for the cost below. Prices (list prices per 1k tokens):

{PRICES_NOTE}

Cost is per 1,000 held-out prompts; "lift" is the accuracy above the random mixture of the two models
that costs the same (the straight line between always-Mixtral and always-GPT-4).

| routing | accuracy | USD per 1k prompts | share to GPT-4 | lift over the line |
|---|---|---|---|---|
{table}

![accuracy against cost](img/routing_mmlu.png)

Of the {len(interior)} knob values that mix the two models, {above} lie above the line.

How to read it. Each held-out prompt is embedded once here (the same model and code as the server's text
path) and discovered by vector, once per knob value. Discover's learned quality for each model is its signed
share of the evidence among the 10 past outcomes nearest to the prompt (the 5 nearest training prompts,
one outcome per model each), plus the model's overall success rate weighing as much as one outcome at
similarity 0.5 (registry/service/outcomes.py `Votes`). The overall rate is what sends the quality-only end
to GPT-4 when the neighbours do not tell the models apart. With two candidates the cost term is a threshold
on the estimated accuracy gap (GPT-4 wins when (1-a) * 0.8 * gap > a * (1 - Mixtral's cost / GPT-4's cost)),
so the sweep moves from mostly GPT-4 to only Mixtral. The lift over the line is small next to the
oracle's: MiniLM places prompts by topic, not by difficulty, and within a subject GPT-4's advantage is
mostly prompt-specific (RouteLLM's paper finds MMLU hard to route from embeddings too).

Reproduce: `{command}` ({timings["total_s"]:.0f} s on two cores: {timings["report_s"]:.0f} s
reporting, {timings["discover_s"]:.0f} s for {timings["discovers"]:.0f} Discovers, 16 calls in flight; without
`--limit` every prompt, `--smoke` for a small run).

Data: RouteLLM (github.com/lm-sys/RouteLLM, Apache License 2.0): Ong et al., "RouteLLM: Learning to Route
LLMs with Preference Data", arXiv 2406.18665; its per-subject MMLU responses of Mixtral-8x7B-Instruct and
GPT-4-1106-preview (`routellm/evals/mmlu/responses/`), joined in `../shared/datasets/routellm-mmlu`.
"""


if __name__ == "__main__":
    main()
