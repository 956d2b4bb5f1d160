"""The embedding model: verified weights, unit vectors, a cache that returns what the model would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.domain.models import Agent, AgentKind, Capability
from registry.embedding.sentence import (
    MINILM_SHA256,
    SentenceTransformerEmbedder,
    WeightsMismatch,
    bundled_model_path,
)
from registry.embedding.template import DEFAULT_TEMPLATE, check_template, render
from registry.files import file_sha256


def test_bundled_weights_are_the_upstream_file() -> None:
    assert file_sha256(bundled_model_path() / "model.safetensors") == MINILM_SHA256


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not the model")
    with pytest.raises(WeightsMismatch, match="expected 53aa5117"):
        SentenceTransformerEmbedder(tmp_path)
    with pytest.raises(WeightsMismatch, match=r"no model\.safetensors"):
        SentenceTransformerEmbedder(tmp_path / "missing")


def test_vectors_are_unit_length_and_cached_exactly(embedder: SentenceTransformerEmbedder) -> None:
    texts = ["translate a contract", "review a pull request", "translate a contract"]
    first = embedder.embed(texts)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first[0], first[2])
    again = embedder.embed(["translate a contract"])
    assert np.array_equal(again[0], first[0])


def test_similar_tasks_are_closer(embedder: SentenceTransformerEmbedder) -> None:
    task, translate, review = embedder.embed(
        ["translate this German contract into English", "translates documents between languages", "reviews code"]
    )
    assert float(task @ translate) > float(task @ review) + 0.2


def test_template_renders_name_description_and_examples() -> None:
    agent = Agent(tenant="default", name="a", kind=AgentKind.TOOL)
    cap = Capability(name="ocr", version="1.0.0", description="Reads text.", examples=("scan this", "read that"))
    assert render(DEFAULT_TEMPLATE, agent, cap) == "ocr: Reads text. Examples: scan this; read that"
    with pytest.raises(ValueError, match="bad capability template"):
        check_template("{name} {unknown}")
