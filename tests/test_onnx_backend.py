"""The ONNX Runtime backend serves the torch path's vector space: same identity, vectors within the
stated tolerance (ONNX_MAX_ABS_DIFF, ONNX_MIN_COSINE) over varied texts, the same answers from a server;
its export is reused while intact and redone when damaged; it never imports torch."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from capreg_client import CapregClient

from registry.embedding import onnx_backend
from registry.embedding.onnx_backend import (
    META_FILE,
    ONNX_FILE,
    ONNX_MAX_ABS_DIFF,
    ONNX_MIN_COSINE,
    OnnxEmbedder,
    OnnxExportError,
    export_onnx,
    onnx_dir,
)
from registry.embedding.sentence import SentenceTransformerEmbedder, WeightsMismatch, bundled_model_path
from tests.support import ServerThread, running_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
WORDS = (  # noqa: SIM905  (a paragraph of words reads better than a column of them)
    "summarize translate route classify extract invoice contract ticket customer weather forecast code review "
    "deploy database query search image caption legal medical schedule meeting refund shipment report"
).split()
ALPHABET = "abcdefghijklmnopqrstuvwxyz     àéîõüßçñ東京日本語한국어Русскийالعربية🙂🚀—…“”"
LONG = " ".join(["route each customer ticket to the agent that resolves it fastest and cheapest"] * 30)


def varied_texts(count: int, seed: int = 11) -> list[str]:
    """Empty and whitespace-only, short, non-ASCII, and past 256 tokens (truncated), all distinct."""
    rng = random.Random(seed)
    texts = ["", " ", "\n\t", "?", "🙂", "東京で寿司を食べたい", "Привет, мир", "Café naïve résumé ﬁ", "a\u0301"]
    texts += ["[CLS] [SEP] [MASK] [PAD]", "<b>html</b> &amp; entities", LONG]
    texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) for _ in range(count // 2)]
    texts += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 120))) for _ in range(count // 3)]
    texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 400))) for _ in range(count // 15)]
    return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the export, made once for the module (about ten seconds)."""
    models = tmp_path_factory.mktemp("models")
    export_onnx(bundled_model_path(), onnx_dir(models))
    return models


@pytest.fixture(scope="module")
def onnx_embedder(models_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(bundled_model_path(), onnx_dir(models_dir), cache_size=0)


@pytest.fixture
def export_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A copy of the export this test may damage."""
    copy = tmp_path / "onnx"
    shutil.copytree(onnx_dir(models_dir), copy)
    return copy


def test_it_serves_the_torch_embedders_space(
    onnx_embedder: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    assert onnx_embedder.model_name == embedder.model_name
    assert onnx_embedder.model_revision == embedder.model_revision
    assert onnx_embedder.weights_sha256 == embedder.weights_sha256
    assert onnx_embedder.dim == embedder.dim == 384
    assert onnx_embedder.meta["opset"] == onnx_backend.OPSET
    assert onnx_embedder.meta["source_weights_sha256"] == embedder.weights_sha256
    assert {"onnx_sha256", "tokenizer_sha256", "torch_version", "onnxruntime_version"} <= onnx_embedder.meta.keys()


def test_vectors_equal_the_torch_paths_within_the_stated_tolerance(
    onnx_embedder: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    texts = varied_texts(300)
    assert len(texts) >= 250
    ours, theirs = onnx_embedder.embed(texts), embedder.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    worst = float(np.abs(ours - theirs).max())
    cosine = float((ours * theirs).sum(axis=1).min())
    assert worst <= ONNX_MAX_ABS_DIFF, f"max abs diff {worst:.2e}"
    assert cosine >= ONNX_MIN_COSINE, f"min cosine {cosine:.8f}"


def test_long_texts_are_truncated_at_256_tokens_like_sentence_transformers(
    onnx_embedder: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    past = LONG + " but this tail lies beyond the limit and must change nothing"
    encoded = onnx_embedder._tokenizer.encode(past)
    assert sum(encoded.attention_mask) == 256 and encoded.ids[-1] == onnx_embedder._tokenizer.token_to_id("[SEP]")
    ours = onnx_embedder.embed([LONG, past])
    np.testing.assert_array_equal(ours[0], ours[1])
    theirs = embedder.embed([LONG, past])
    assert float(np.abs(ours - theirs).max()) <= ONNX_MAX_ABS_DIFF
    # and under the limit nothing is cut: the last words still count
    shorter, longer = " ".join(LONG.split()[:180]), " ".join(LONG.split()[:185])
    assert sum(onnx_embedder._tokenizer.encode(longer).attention_mask) < 256
    assert not np.array_equal(*onnx_embedder.embed([shorter, longer]))


def test_a_text_embeds_the_same_alone_as_in_a_padded_batch(onnx_embedder: OnnxEmbedder) -> None:
    texts = ["", "hi", "summarize this quarterly report for the board", LONG, "東京の天気"]
    batch = onnx_embedder.embed(texts)
    alone = np.stack([onnx_embedder.embed([text])[0] for text in texts])
    assert float(np.abs(batch - alone).max()) <= ONNX_MAX_ABS_DIFF / 10


def test_the_cache_answers_repeats_without_the_model(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = OnnxEmbedder(bundled_model_path(), onnx_dir(models_dir), cache_size=2)
    calls: list[list[str]] = []
    encode = embedder._encode

    def counting(texts: list[str]) -> npt.NDArray[np.float32]:
        calls.append(list(texts))
        return encode(texts)

    monkeypatch.setattr(embedder._cached, "_encode", counting)  # what the shared cache calls the model with
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.cached("route a ticket") is None
    first = embedder.embed(["route a ticket", "caption a photo", "route a ticket"])
    assert calls == [["route a ticket", "caption a photo"]]  # a repeat within a call is embedded once
    np.testing.assert_array_equal(first[0], first[2])
    hit = embedder.cached("route a ticket")
    assert hit is not None
    np.testing.assert_array_equal(hit, first[0])
    again = embedder.embed(["caption a photo", "route a ticket"])
    assert len(calls) == 1
    np.testing.assert_array_equal(again, first[[1, 0]])
    embedder.embed(["book a flight"])  # a third text: the least recently used ("caption a photo") goes
    assert calls[-1] == ["book a flight"]
    assert embedder.cached("caption a photo") is None
    assert embedder.cached("route a ticket") is not None


def test_concurrent_callers_get_the_vectors_a_lone_caller_gets(models_dir: Path) -> None:
    embedder = OnnxEmbedder(bundled_model_path(), onnx_dir(models_dir), cache_size=100)
    texts = [f"{i} " + " ".join(random.Random(i).choices(WORDS, k=8)) for i in range(40)]
    expected = embedder.embed(texts)
    embedder._cached._cache.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: embedder.embed(texts[i::4]), range(4)))
    for i, vectors in enumerate(got):
        np.testing.assert_allclose(vectors, expected[i::4], atol=ONNX_MAX_ABS_DIFF / 10)


def test_an_intact_export_is_reused(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = onnx_dir(models_dir)
    before = {name: (out / name).stat().st_mtime_ns for name in (ONNX_FILE, META_FILE)}

    def no_export(*args: object) -> None:
        raise AssertionError("an intact export was exported again")

    monkeypatch.setattr(onnx_backend, "_export", no_export)
    assert export_onnx(bundled_model_path(), out) == out / ONNX_FILE
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before


def tamper_meta_source(out: Path) -> None:
    meta = json.loads((out / META_FILE).read_text())
    meta["source_weights_sha256"] = "0" * 64
    (out / META_FILE).write_text(json.dumps(meta))


def flip_a_byte(out: Path) -> None:
    with (out / ONNX_FILE).open("r+b") as fh:
        fh.seek(1_000_000)
        byte = fh.read(1)
        fh.seek(1_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))


TAMPERINGS = {
    "meta names other weights": tamper_meta_source,
    "meta is not JSON": lambda out: (out / META_FILE).write_text("{not json"),
    "meta is missing": lambda out: (out / META_FILE).unlink(),
    "onnx file damaged": flip_a_byte,
    "onnx file truncated": lambda out: (out / ONNX_FILE).write_bytes((out / ONNX_FILE).read_bytes()[:1000]),
    "tokenizer missing": lambda out: (out / "tokenizer.json").unlink(),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_damaged_export_is_refused_and_exported_again(
    tamper: Callable[[Path], object], export_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tamper(export_copy)
    with pytest.raises(OnnxExportError):
        OnnxEmbedder(bundled_model_path(), export_copy)
    exported: list[Path] = []
    monkeypatch.setattr(onnx_backend, "_export", lambda source, out, sha: exported.append(out))
    export_onnx(bundled_model_path(), export_copy)
    assert exported == [export_copy]


def test_a_real_export_again_restores_a_damaged_one(
    export_copy: Path, onnx_embedder: OnnxEmbedder, models_dir: Path
) -> None:
    flip_a_byte(export_copy)
    export_onnx(bundled_model_path(), export_copy)
    restored = OnnxEmbedder(bundled_model_path(), export_copy, cache_size=0)
    assert restored.meta["onnx_sha256"] == onnx_embedder.meta["onnx_sha256"]  # the export is reproducible
    texts = ["summarize a PDF", "東京の天気", ""]
    np.testing.assert_array_equal(restored.embed(texts), onnx_embedder.embed(texts))
    assert not [p.name for p in export_copy.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_other_weights_than_expected_are_refused_before_any_export(tmp_path: Path) -> None:
    with pytest.raises(WeightsMismatch, match="expected"):
        export_onnx(bundled_model_path(), tmp_path / "out", expected_sha256="0" * 64)
    assert not (tmp_path / "out").exists()


def test_serving_imports_no_torch(models_dir: Path, tmp_path: Path) -> None:
    """The server's own path, load_embedder with the onnx backend and an export present, in a fresh
    interpreter: vectors come back and torch was never imported."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from registry.app import load_embedder\n"
        "from registry.config import Settings\n"
        f"settings = Settings(data_dir=Path({str(tmp_path)!r}), models_dir=Path({str(models_dir)!r}),"
        " embedding_backend='onnx')\n"
        "embedder = load_embedder(settings)\n"
        "print(type(embedder).__name__, embedder.embed(['hello'])[0].shape, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "OnnxEmbedder (384,) False"


# Two unit vectors with cosine >= ONNX_MIN_COSINE are at most sqrt(2 (1 - cos)) apart, so a similarity of
# the task to a capability (both embedded by each backend) moves by at most twice that.
SIMILARITY_TOLERANCE = 2 * math.sqrt(2 * (1 - ONNX_MIN_COSINE))
QUERIES = [
    "translate this German supply contract into English",
    "caption this photo of a beach",
    "summarize the quarterly earnings call",
    "find flights from Paris to Tokyo next week",
    "review my Python pull request for bugs",
]


@pytest.fixture
def onnx_server(tmp_path: Path, models_dir: Path) -> Iterator[ServerThread]:
    """A server that loads its own embedder from settings saying "onnx", as `capreg serve` does."""
    data = tmp_path / "onnx-server"
    with running_server(
        data,
        f"sqlite:///{tmp_path / 'onnx.db'}",
        None,  # type: ignore[arg-type]  # build_app loads the embedder from the settings when given None
        demo=True,
        embedding_backend="onnx",
        models_dir=models_dir,
    ) as running:
        yield running


def test_a_server_on_onnx_answers_like_the_torch_server(onnx_server: ServerThread, demo_server: ServerThread) -> None:
    served = onnx_server.app.serving
    assert isinstance(served.embedder, OnnxEmbedder)
    assert served.space.weights_sha256 == demo_server.app.serving.space.weights_sha256
    with CapregClient(onnx_server.target, timeout=30) as ours, CapregClient(demo_server.target, timeout=30) as theirs:
        for query in QUERIES:
            got, expected = ours.discover(query, top_k=3).matches, theirs.discover(query, top_k=3).matches
            assert got and expected
            assert (got[0].agent_name, got[0].capability.name) == (expected[0].agent_name, expected[0].capability.name)
            assert got[0].similarity == pytest.approx(expected[0].similarity, abs=SIMILARITY_TOLERANCE)
