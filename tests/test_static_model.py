"""The static embedding model distilled from the bundled MiniLM: a second real model, of dimension 256.

One real distillation per session (the `distilled` fixture, about 20 to 60 s of CPU); tests that need a
second one reuse its transformer outputs, and check separately that those outputs are reproducible.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner

from registry.cli.main import cli
from registry.embedding import distill as distill_module
from registry.embedding.base import Embedder
from registry.embedding.distill import (
    BATCH_SIZE,
    EMBEDDINGS_FILE,
    META_FILE,
    RECIPE_VERSION,
    TOKENIZER_FILE,
    ProgressCallback,
    distill_static_model,
    static_identity,
    token_states,
)
from registry.embedding.models import (
    CATALOG,
    STATIC_MINILM_NAME,
    UnknownModel,
    expected_identity,
    list_models,
    load_embedder,
    model_path,
    resolve_models_dir,
)
from registry.embedding.sentence import MINILM_NAME, MINILM_SHA256, bundled_model_path
from registry.embedding.static import StaticEmbedder, StaticModelError
from registry.files import file_sha256

# MetaTool (github.com/HowieHwong/MetaTool, MIT License; arXiv 2310.03128), see ../shared/datasets/README.md.


@dataclass
class Distilled:
    models_dir: Path
    path: Path
    embedder: StaticEmbedder
    progress: list[tuple[int, int]]
    seconds: float
    states: npt.NDArray[np.float64]  # the transformer outputs the distillation used (step 1)


@pytest.fixture(scope="session")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> Distilled:
    """The static model, distilled once by its first load into an empty models directory."""
    models_dir = tmp_path_factory.mktemp("models")
    captured: list[npt.NDArray[np.float64]] = []

    def capturing(
        source_path: Path, progress: ProgressCallback | None = None, *, ids: Sequence[int] | None = None
    ) -> npt.NDArray[np.float64]:
        states = token_states(source_path, progress, ids=ids)
        captured.append(states.copy())
        return states

    calls: list[tuple[int, int]] = []
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill_module, "token_states", capturing)
        embedder = load_embedder(
            STATIC_MINILM_NAME, models_dir, progress=lambda done, total: calls.append((done, total))
        )
    seconds = time.perf_counter() - started
    assert isinstance(embedder, StaticEmbedder) and len(captured) == 1
    path = model_path(STATIC_MINILM_NAME, models_dir)
    assert path is not None
    return Distilled(models_dir, path, embedder, calls, seconds, captured[0])


@pytest.fixture
def replay_states(distilled: Distilled, monkeypatch: pytest.MonkeyPatch) -> None:
    """Distillations in this test reuse the session's transformer outputs instead of recomputing them."""

    def replay(
        source_path: Path, progress: ProgressCallback | None = None, *, ids: Sequence[int] | None = None
    ) -> npt.NDArray[np.float64]:
        assert ids is None
        if progress is not None:
            progress(len(distilled.states), len(distilled.states))
        return distilled.states.copy()

    monkeypatch.setattr(distill_module, "token_states", replay)


@pytest.fixture
def damaged_copy(distilled: Distilled, tmp_path: Path) -> Iterator[Path]:
    """A models directory holding a copy of the static model with one bit of embeddings.npy flipped."""
    models_dir = tmp_path / "models"
    copy = models_dir / distilled.path.name
    shutil.copytree(distilled.path, copy)
    matrix_file = copy / EMBEDDINGS_FILE
    data = bytearray(matrix_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    matrix_file.write_bytes(bytes(data))
    yield models_dir


# -- the model ---------------------------------------------------------------------------------------


def test_dimension_256_and_unit_vectors(distilled: Distilled) -> None:
    embedder: Embedder = distilled.embedder  # satisfies the protocol the registry uses
    assert embedder.dim == 256 and embedder.model_name == STATIC_MINILM_NAME
    assert embedder.weights_sha256 == expected_identity(STATIC_MINILM_NAME)
    assert embedder.model_revision == embedder.weights_sha256[:12]
    vectors = embedder.embed(["translate a contract", "review a pull request", "x", "Ünïcödé ÀÉÎ and CAPITALS"])
    assert vectors.shape == (4, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 256)


def test_distillation_wrote_what_meta_json_says(distilled: Distilled) -> None:
    meta = json.loads((distilled.path / META_FILE).read_text())
    assert meta["model_name"] == STATIC_MINILM_NAME and meta["recipe_version"] == RECIPE_VERSION
    assert meta["dim"] == 256 and meta["vocab_size"] == 30522
    assert meta["source_weights_sha256"] == MINILM_SHA256
    assert meta["embeddings_sha256"] == file_sha256(distilled.path / EMBEDDINGS_FILE)
    assert (distilled.path / TOKENIZER_FILE).read_bytes() == (bundled_model_path() / TOKENIZER_FILE).read_bytes()
    matrix = np.load(distilled.path / EMBEDDINGS_FILE)
    assert matrix.shape == (30522, 256) and matrix.dtype == np.float32
    assert not matrix[0].any()  # the Zipf weight of rank 0 is log(1) = 0
    # Nothing else is left beside it (the temporary directory was renamed into place).
    assert [p.name for p in distilled.models_dir.iterdir()] == [distilled.path.name]
    # Progress covered the whole vocabulary, in batches, in order.
    assert distilled.progress[-1] == (30522, 30522)
    assert len(distilled.progress) == -(-30522 // BATCH_SIZE)
    assert [done for done, _ in distilled.progress] == sorted(done for done, _ in distilled.progress)


def test_identity_depends_on_the_source_and_parameters_only(distilled: Distilled) -> None:
    tokenizer_sha = file_sha256(bundled_model_path() / TOKENIZER_FILE)
    identity = static_identity(MINILM_SHA256, tokenizer_sha, 256)
    assert distilled.embedder.weights_sha256 == identity
    # Another source, tokenizer or dimension is another model.
    assert static_identity("0" * 64, tokenizer_sha, 256) != identity
    assert static_identity(MINILM_SHA256, "0" * 64, 256) != identity
    assert static_identity(MINILM_SHA256, tokenizer_sha, 128) != identity


def test_distilling_twice_gives_the_same_model(distilled: Distilled, replay_states: None, tmp_path: Path) -> None:
    # The rest of the recipe (PCA, weighting, files) on the same transformer outputs: identical files.
    meta = distill_static_model(tmp_path / "again", bundled_model_path(), model_name=STATIC_MINILM_NAME)
    first = json.loads((distilled.path / META_FILE).read_text())
    assert meta["identity_sha256"] == first["identity_sha256"] == distilled.embedder.weights_sha256
    assert meta["embeddings_sha256"] == first["embeddings_sha256"]
    again = StaticEmbedder(tmp_path / "again")
    text = ["route this customer complaint to the right team"]
    assert np.array_equal(again.embed(text), distilled.embedder.embed(text))


def test_the_transformer_outputs_are_reproducible(distilled: Distilled) -> None:
    # A fresh load of the source computing one of the distillation's batches gives the same bits.
    batch = range(3 * BATCH_SIZE, 4 * BATCH_SIZE)
    states = token_states(bundled_model_path(), ids=batch)
    assert np.array_equal(states, distilled.states[batch.start : batch.stop])


def test_embedding_is_deterministic_and_independent_of_the_batch(distilled: Distilled) -> None:
    embedder = distilled.embedder
    texts = [f"summarise quarterly report {i} for the finance team" for i in range(50)] + [""]
    batch = embedder.embed(texts)
    assert np.array_equal(batch, embedder.embed(texts))
    singles = np.vstack([embedder.embed([t]) for t in texts])
    assert np.array_equal(batch, singles)


def test_similar_texts_score_higher_than_unrelated_ones(distilled: Distilled) -> None:
    triples = [
        ("translate this contract into German", "translation of legal documents", "forecast tomorrow's weather"),
        ("write a poem about the sea", "compose poetry and verse", "convert a PDF invoice to a spreadsheet"),
        ("find cheap flights to Tokyo", "book airline tickets and compare plane fares", "summarise a paper"),
        ("transcribe this podcast audio", "speech to text transcription of recordings", "generate a logo image"),
        ("fix the bug in my python code", "debug and repair software programs", "recommend a recipe for dinner"),
    ]
    for query, similar, unrelated in triples:
        q, s, u = distilled.embedder.embed([query, similar, unrelated])
        assert float(q @ s) > float(q @ u) + 0.15, (query, float(q @ s), float(q @ u))


def test_texts_without_a_known_token_embed_to_zero(distilled: Distilled) -> None:
    embedder = distilled.embedder
    empty, blank, unknown, mixed, plain = embedder.embed(
        ["", "  \n\t", "🙂🙂 🚀", "deploy 🚀 the service", "deploy the service"]
    )
    for vector in (empty, blank, unknown):
        assert not vector.any()  # scores 0 against everything
    assert np.array_equal(mixed, plain)  # [UNK] tokens are left out of the mean


def test_embedding_is_thread_safe(distilled: Distilled) -> None:
    embedder = distilled.embedder
    batches = [[f"task {t} number {i}: classify this support ticket" for i in range(200)] for t in range(8)]
    expected = [embedder.embed(b) for b in batches]
    results: dict[int, npt.NDArray[np.float32]] = {}

    def work(t: int) -> None:
        for _ in range(5):
            results[t] = embedder.embed(batches[t])
            assert np.array_equal(results[t], expected[t])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(results[t], expected[t]) for t in range(8))


def test_a_thousand_texts_embed_in_one_call_as_they_do_one_by_one(distilled: Distilled) -> None:
    texts = [f"summarise support ticket {i} about a late delivery" for i in range(1000)]
    vectors = distilled.embedder.embed(texts)
    assert vectors.shape == (1000, 256)
    assert np.allclose(vectors[[0, 499, 999]], distilled.embedder.embed([texts[0], texts[499], texts[999]]))


# -- refusing what is not the model ------------------------------------------------------------------


def test_a_corrupted_matrix_is_refused_with_how_to_rebuild(damaged_copy: Path) -> None:
    with pytest.raises(StaticModelError, match=r"embeddings\.npy is damaged.*capreg models distill .* --force"):
        load_embedder(STATIC_MINILM_NAME, damaged_copy)


def test_other_damage_is_refused(distilled: Distilled, tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(distilled.path, target)
        return target

    no_tokenizer = copy("no-tokenizer")
    (no_tokenizer / TOKENIZER_FILE).unlink()
    with pytest.raises(StaticModelError, match=r"tokenizer\.json is missing or damaged"):
        StaticEmbedder(no_tokenizer)

    lying_meta = copy("lying-meta")
    meta = json.loads((lying_meta / META_FILE).read_text())
    (lying_meta / META_FILE).write_text(json.dumps(meta | {"dim": 128}))
    with pytest.raises(StaticModelError, match="identity does not match"):
        StaticEmbedder(lying_meta)

    old_recipe = copy("old-recipe")
    (old_recipe / META_FILE).write_text(json.dumps(meta | {"recipe_version": "capreg-static-v0"}))
    with pytest.raises(StaticModelError, match="recipe 'capreg-static-v0'"):
        StaticEmbedder(old_recipe)

    with pytest.raises(StaticModelError, match="expected 000000000000"):
        StaticEmbedder(copy("other"), expected_sha256="0" * 64)
    with pytest.raises(StaticModelError, match=r"meta\.json is missing"):
        StaticEmbedder(tmp_path / "nothing-here")


# -- the catalog -------------------------------------------------------------------------------------


def test_the_catalog_lists_both_models(distilled: Distilled, tmp_path: Path) -> None:
    assert {name: spec.dim for name, spec in CATALOG.items()} == {MINILM_NAME: 384, STATIC_MINILM_NAME: 256}
    found = {info.name: info for info in list_models(distilled.models_dir)}
    assert found[MINILM_NAME].present and found[MINILM_NAME].identity == MINILM_SHA256
    static = found[STATIC_MINILM_NAME]
    assert static.present and static.problem is None and static.path == distilled.path
    assert static.identity == distilled.embedder.weights_sha256
    empty = {info.name: info for info in list_models(tmp_path)}
    assert not empty[STATIC_MINILM_NAME].present and empty[MINILM_NAME].present
    with pytest.raises(UnknownModel, match="known: "):
        load_embedder("nobody/such-model", tmp_path)
    assert resolve_models_dir(None, Path("data")) == Path("data") / "models"
    assert resolve_models_dir(Path("elsewhere"), Path("data")) == Path("elsewhere")


# -- the command line --------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_models_list(distilled: Distilled, damaged_copy: Path) -> None:
    code, out = run("models", "list", "--json", "--models-dir", str(distilled.models_dir))
    assert code == 0
    listed: list[dict[str, Any]] = json.loads(out)
    assert [(m["name"], m["dim"], m["present"], m["ok"]) for m in listed] == [
        (MINILM_NAME, 384, True, True),
        (STATIC_MINILM_NAME, 256, True, True),
    ]
    assert listed[1]["path"] == str(distilled.path)
    code, out = run("models", "list", "--models-dir", str(distilled.models_dir))
    assert code == 0 and STATIC_MINILM_NAME in out and "present" in out
    code, out = run("models", "list", "--json", "--models-dir", str(damaged_copy))
    damaged = json.loads(out)[1]
    assert damaged["present"] and not damaged["ok"] and "damaged" in damaged["problem"]


def test_cli_models_distill(distilled: Distilled, damaged_copy: Path, replay_states: None) -> None:
    code, out = run("models", "distill", "--models-dir", str(distilled.models_dir))
    assert code == 0 and "already present and verified" in out
    # A damaged copy is rebuilt (from the session's transformer outputs, to keep this test fast).
    code, out = run("models", "distill", STATIC_MINILM_NAME, "--models-dir", str(damaged_copy), "--json")
    assert code == 0
    rebuilt = json.loads(out)
    assert rebuilt["distilled"] and rebuilt["ok"] and rebuilt["identity"] == distilled.embedder.weights_sha256
    path = damaged_copy / distilled.path.name
    assert (path / EMBEDDINGS_FILE).read_bytes() == (distilled.path / EMBEDDINGS_FILE).read_bytes()
    code, out = run("models", "distill", "--models-dir", str(damaged_copy), "--force")
    assert code == 0 and "distilled in" in out
    code, out = run("models", "distill", MINILM_NAME)
    assert code == 0 and "nothing to distil" in out
    code, _ = run("models", "distill", "nobody/such-model")
    assert code == 1


def test_cli_models_help() -> None:
    for args in (["models"], ["models", "list"], ["models", "distill"]):
        code, out = run(*args, "--help")
        assert code == 0 and "Usage:" in out
