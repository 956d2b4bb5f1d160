"""The two backends of all-MiniLM-L6-v2 side by side: torch (sentence-transformers) and ONNX Runtime
(registry/embedding/onnx_backend.py), in one process, caches off, rounds interleaved so the machine's
drift hits both alike.

Measures one text's latency (p50 over --calls calls, a different text each), throughput at batch 32,
each backend's cold start in a fresh interpreter (imports and load, what a server's start waits for),
and how far apart their vectors are over varied texts (empty, short, non-ASCII, truncated past 256
tokens), against the tolerance the ONNX backend states.

    .venv/bin/python bench/embed_backends.py            # 300 single calls, 20 batches of 32
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

if __package__ in (None, ""):  # run as `python bench/embed_backends.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import LatencyStats, machine, scratch_dir
from registry.embedding.base import Embedder
from registry.embedding.onnx_backend import ONNX_MAX_ABS_DIFF, ONNX_MIN_COSINE, OnnxEmbedder, export_onnx
from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path

BATCH = 32
WORDS = (
    "summarize translate route classify extract invoice contract ticket customer weather forecast code review "
    "deploy database query search image caption legal medical schedule meeting email refund shipment report "
    "sentiment German French SQL Python PDF spreadsheet calendar booking flight hotel"
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


def single_latency(backends: dict[str, Embedder], texts: list[str]) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {name: [] for name in backends}
    names = list(backends)
    for i, text in enumerate(texts):
        for name in names if i % 2 else reversed(names):  # alternate which goes first
            started = time.perf_counter_ns()
            backends[name].embed([text])
            samples[name].append(time.perf_counter_ns() - started)
    return samples


def batch_throughput(backends: dict[str, Embedder], batches: list[list[str]]) -> dict[str, float]:
    spent = dict.fromkeys(backends, 0.0)
    names = list(backends)
    for i, batch in enumerate(batches):
        for name in names if i % 2 else reversed(names):
            started = time.perf_counter()
            backends[name].embed(batch)
            spent[name] += time.perf_counter() - started
    texts = sum(len(batch) for batch in batches)
    return {name: round(texts / seconds, 1) for name, seconds in spent.items()}


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
        cwd=Path(__file__).resolve().parent.parent,
    )
    seconds, torch_loaded = done.stdout.split()[-2:]
    return {"seconds": float(seconds), "imports_torch": torch_loaded == "True"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run: 20 single calls, 2 batches, 40 texts")
    parser.add_argument("--calls", type=int, default=300, help="single-text calls per backend")
    parser.add_argument("--batches", type=int, default=20, help=f"batches of {BATCH} per backend")
    parser.add_argument("--diff-texts", type=int, default=300, help="texts the vectors are compared on")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: cores)")
    parser.add_argument("--onnx-dir", type=Path, default=None, help="reuse (or make) the export here")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.batches, args.diff_texts = 20, 2, 40
    rng = random.Random(7)
    import torch

    with scratch_dir() as scratch:
        onnx_dir = args.onnx_dir or scratch / "onnx"
        source = bundled_model_path()
        started = time.perf_counter()
        export_onnx(source, onnx_dir)
        export_s = time.perf_counter() - started
        backends: dict[str, Embedder] = {
            "torch": SentenceTransformerEmbedder(source, cache_size=0),
            "onnx": OnnxEmbedder(source, onnx_dir, cache_size=0, threads=args.threads),
        }
        varied = varied_texts(args.diff_texts, rng)
        vectors = {name: embedder.embed(varied) for name, embedder in backends.items()}
        diff = float(np.abs(vectors["torch"] - vectors["onnx"]).max())
        cosine = float((vectors["torch"] * vectors["onnx"]).sum(axis=1).min())
        single_latency(backends, task_texts(20, rng))  # warm up
        samples = single_latency(backends, task_texts(args.calls, rng))
        throughput = batch_throughput(backends, [task_texts(BATCH, rng) for _ in range(args.batches)])
        cold = {name: cold_start(name, onnx_dir) for name in backends}
    single = {name: LatencyStats.of(values) for name, values in samples.items()}
    result = {
        "machine": machine(),
        "versions": {"torch": str(torch.__version__), "onnxruntime": str(backends["onnx"].meta["onnxruntime_version"])},
        "threads": {"torch": torch.get_num_threads(), "onnx_intra_op": args.threads or "default (physical cores)"},
        "single_text": {name: stats.as_dict() for name, stats in single.items()},
        "single_p50_torch_over_onnx": round(single["torch"].p50_ms / single["onnx"].p50_ms, 2),
        f"batch_{BATCH}_texts_per_s": throughput,
        "cold_start_to_first_vector": cold,
        "export_s": round(export_s, 2),
        "agreement": {
            "texts": len(varied),
            "max_abs_diff": diff,
            "min_cosine": cosine,
            "tolerance": {"max_abs_diff": ONNX_MAX_ABS_DIFF, "min_cosine": ONNX_MIN_COSINE},
            "within": diff <= ONNX_MAX_ABS_DIFF and cosine >= ONNX_MIN_COSINE,
        },
    }
    print(json.dumps(result, indent=1))
    if not result["agreement"]["within"]:  # type: ignore[index]
        sys.exit("the ONNX backend is outside its stated tolerance")


if __name__ == "__main__":
    main()
