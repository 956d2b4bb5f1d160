"""The two backends of all-MiniLM-L6-v2 side by side: torch (sentence-transformers) and ONNX Runtime
(registry/embedding/onnx_backend.py), caches off, each timed in a process of its own (as a server runs
one), rounds alternating between them so the machine's drift hits both alike.

Measures one text's latency (p50 over --calls calls, a different text each), throughput at batch 32,
each backend's cold start in a fresh interpreter (imports and load, what a server's start waits for),
and how far apart their vectors are over varied texts (empty, short, non-ASCII, truncated past 256
tokens), against the tolerance the ONNX backend states.

    .venv/bin/python bench/embed_backends.py            # 300 single calls, 20 batches of 32, 2 rounds
    .venv/bin/python bench/embed_backends.py --smoke
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information

if __package__ in (None, ""):  # run as `python bench/embed_backends.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import LatencyStats, machine, scratch_dir
from registry.embedding.base import Embedder
from registry.embedding.onnx_backend import ONNX_MAX_ABS_DIFF, ONNX_MIN_COSINE, OnnxEmbedder, export_onnx
from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "onnx")
BATCH = 32
WORDS = (  # noqa: SIM905  (a paragraph of words reads better than a column of them)
    "summarize translate route classify extract invoice contract ticket customer weather forecast code "
    "review deploy database query search image caption legal medical schedule meeting email refund "
    "shipment report sentiment German French SQL Python PDF spreadsheet calendar booking flight hotel"
).split()
ODD = ["", " ", "?", "🙂", "東京で寿司を食べたい", "Привет, мир", "Café naïve résumé ﬁ", "[CLS] [MASK] [SEP]"]


def task_texts(count: int, rng: random.Random, words: tuple[int, int] = (6, 24)) -> list[str]:
    """Distinct task-like texts, so no layer below can serve a repeat."""
    texts: dict[str, None] = {}
    while len(texts) < count:
        texts[f"{len(texts)} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))] = None
    return list(texts)


def varied_texts(count: int, rng: random.Random) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz     àéîõüßçñ東京日本語한국어Русскийالعربية🙂🚀—…“”"
    texts = list(ODD)
    texts += task_texts(count // 2, rng)
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(count // 4)]
    texts += task_texts(count // 4, rng, (200, 500))  # past 256 tokens: truncated
    return texts


def load(backend: str, onnx_dir: Path, threads: int | None) -> Embedder:
    source = bundled_model_path()
    if backend == "onnx":
        return OnnxEmbedder(source, onnx_dir, cache_size=0, threads=threads)
    return SentenceTransformerEmbedder(source, cache_size=0)


def worker(backend: str, onnx_dir: Path, threads: int | None, calls: int, batches: int, seed: int) -> None:
    """One backend alone in this process (as a server runs it): one text at a time, then batches of 32.
    Two thread pools in one process (torch's OpenMP, ONNX Runtime's) spin-wait against each other on a
    small machine and slow both down (here about 2x), so each backend is timed in a process of its own."""
    embedder = load(backend, onnx_dir, threads)
    rng = random.Random(seed)
    for text in task_texts(20, rng):  # warm up
        embedder.embed([text])
    single: list[int] = []
    for text in task_texts(calls, rng):
        started = time.perf_counter_ns()
        embedder.embed([text])
        single.append(time.perf_counter_ns() - started)
    work = [task_texts(BATCH, rng) for _ in range(batches)]
    started_s = time.perf_counter()
    for batch in work:
        embedder.embed(batch)
    batch_s = time.perf_counter() - started_s
    threads_used: int | str = threads or "default (physical cores)"
    if backend == "torch":
        import torch

        threads_used = torch.get_num_threads()
    print(json.dumps({"single_ns": single, "batch_s": batch_s, "texts": batches * BATCH, "threads": threads_used}))


def timed_rounds(onnx_dir: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """`args.rounds` rounds, each backend once per round in a fresh process, the order alternating so the
    machine's drift hits both alike; each round's texts are the same for both."""
    found: dict[str, dict[str, Any]] = {name: {"single_ns": [], "batch_s": 0.0, "texts": 0} for name in BACKENDS}
    calls = max(1, args.calls // args.rounds)
    batches = max(1, args.batches // args.rounds)
    for round_number in range(args.rounds):
        for name in BACKENDS if round_number % 2 == 0 else BACKENDS[::-1]:
            command = [sys.executable, "-W", "ignore", __file__, "--worker", name, "--onnx-dir", str(onnx_dir)]
            command += ["--calls", str(calls), "--batches", str(batches), "--seed", str(round_number)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            report = json.loads(done.stdout.splitlines()[-1])
            found[name]["single_ns"] += report["single_ns"]
            found[name]["batch_s"] += report["batch_s"]
            found[name]["texts"] += report["texts"]
            found[name]["threads"] = report["threads"]
    return found


COLD_START = """
import sys, time
started = time.perf_counter()
from pathlib import Path
from registry.embedding.sentence import bundled_model_path
if sys.argv[1] == "onnx":
    from registry.embedding.onnx_backend import OnnxEmbedder
    embedder = OnnxEmbedder(bundled_model_path(), Path(sys.argv[2]), cache_size=0)
else:
    from registry.embedding.sentence import SentenceTransformerEmbedder
    embedder = SentenceTransformerEmbedder(bundled_model_path(), cache_size=0)
embedder.embed(["warm"])
print(round(time.perf_counter() - started, 3), "torch" in sys.modules)
"""


def cold_start(backend: str, onnx_dir: Path) -> dict[str, Any]:
    """Seconds from a fresh interpreter to the first vector, and whether torch got imported on the way."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", COLD_START, backend, str(onnx_dir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    seconds, torch_loaded = done.stdout.split()[-2:]
    return {"seconds": float(seconds), "imports_torch": torch_loaded == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run: 20 single calls, 2 batches, 40 texts")
    parser.add_argument("--calls", type=int, default=300, help="single-text calls per backend, over all rounds")
    parser.add_argument("--batches", type=int, default=20, help=f"batches of {BATCH} per backend, over all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="processes per backend, alternating")
    parser.add_argument("--diff-texts", type=int, default=300, help="texts the vectors are compared on")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: cores)")
    parser.add_argument("--onnx-dir", type=Path, default=None, help="reuse (or make) the export here")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.onnx_dir, args.threads, args.calls, args.batches, args.seed)
        return
    if args.smoke:
        args.calls, args.batches, args.rounds, args.diff_texts = 20, 2, 1, 40
    with scratch_dir() as scratch:
        onnx_dir = args.onnx_dir or scratch / "onnx"
        started = time.perf_counter()
        export_onnx(bundled_model_path(), onnx_dir)
        export_s = time.perf_counter() - started
        timed = timed_rounds(onnx_dir, args)
        cold = {name: cold_start(name, onnx_dir) for name in BACKENDS}
        # The agreement last, both backends in this process: nothing is timed from here on.
        backends = {name: load(name, onnx_dir, args.threads) for name in BACKENDS}
        varied = varied_texts(args.diff_texts, random.Random(7))
        vectors = {name: embedder.embed(varied) for name, embedder in backends.items()}
    diff = float(np.abs(vectors["torch"] - vectors["onnx"]).max())
    cosine = float((vectors["torch"] * vectors["onnx"]).sum(axis=1).min())
    within = diff <= ONNX_MAX_ABS_DIFF and cosine >= ONNX_MIN_COSINE
    single = {name: LatencyStats.of(found["single_ns"]) for name, found in timed.items()}
    import torch

    result = {
        "machine": machine(),
        "versions": {"torch": str(torch.__version__), "onnxruntime": str(ort.__version__)},
        "threads": {name: found["threads"] for name, found in timed.items()},
        "rounds": args.rounds,
        "single_text": {name: stats.as_dict() for name, stats in single.items()},
        "single_p50_torch_over_onnx": round(single["torch"].p50_ms / single["onnx"].p50_ms, 2),
        f"batch_{BATCH}_texts_per_s": {
            name: round(found["texts"] / found["batch_s"], 1) for name, found in timed.items()
        },
        "cold_start_to_first_vector": cold,
        "export_s": round(export_s, 2),
        "agreement": {
            "texts": len(varied),
            "max_abs_diff": diff,
            "min_cosine": cosine,
            "tolerance": {"max_abs_diff": ONNX_MAX_ABS_DIFF, "min_cosine": ONNX_MIN_COSINE},
            "within": within,
        },
    }
    print(json.dumps(result, indent=1))
    if not within:
        sys.exit("the ONNX backend is outside its stated tolerance")


if __name__ == "__main__":
    main()
