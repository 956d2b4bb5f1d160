"""A static (model2vec-style) embedding model: one stored vector per token, a text is their mean.

Built by registry/embedding/distill.py from a sentence-transformers model. Embedding a text: tokenize
it with the source's WordPiece tokenizer (no special tokens, no truncation), drop [UNK] tokens, take
the mean of the remaining tokens' rows and scale it to unit length. A text with no token left (empty,
whitespace only, or only characters the vocabulary does not know, such as most emoji) embeds to the
zero vector: it scores 0 against everything, the only row that is not unit length.

No torch at load or query time: a numpy matrix and the Rust tokenizer. Thread-safe (nothing mutable
is shared) and fast (the whole batch is tokenized in one call and pooled with one np.add.reduceat).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from registry.embedding.distill import (
    EMBEDDINGS_FILE,
    META_FILE,
    RECIPE_VERSION,
    TOKENIZER_FILE,
    static_identity,
)
from registry.embedding.sentence import WeightsMismatch
from registry.files import file_sha256, read_bytes, read_json_object

_CHUNK_TOKENS = 8192  # rows gathered at once while pooling (8 MiB at dimension 256)


class StaticModelError(WeightsMismatch):
    """A static model directory that is missing, damaged or not the model expected."""


class StaticEmbedder:
    """Satisfies registry.embedding.base.Embedder."""

    def __init__(
        self,
        model_dir: Path,
        *,
        expected_sha256: str | None = None,
        model_name: str | None = None,
        rebuild_hint: str | None = None,
    ):
        """Load and verify `model_dir`; `expected_sha256` is the identity the caller requires (None: any).

        Raises StaticModelError (a WeightsMismatch) naming the problem and `rebuild_hint` (how to
        rebuild it) when a file is missing, its sha256 differs from meta.json, or the identity differs.
        """
        self.path = Path(model_dir)
        hint = rebuild_hint or f"delete {self.path} and distil it again (`capreg models distill`)"
        meta = read_json_object(self.path, META_FILE, "static model", StaticModelError, hint)
        try:
            recipe = str(meta["recipe_version"])
            dim = int(meta["dim"])
            vocab_size = int(meta["vocab_size"])
            embeddings_sha = str(meta["embeddings_sha256"])
            tokenizer_sha = str(meta["tokenizer_sha256"])
            source_sha = str(meta["source_weights_sha256"])
            identity = str(meta["identity_sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StaticModelError(f"{self.path / META_FILE} lacks or garbles {exc}; {hint}") from exc
        if recipe != RECIPE_VERSION:
            raise StaticModelError(
                f"{self.path} was built with recipe {recipe!r}; this capreg reads {RECIPE_VERSION!r}: {hint}"
            )
        if static_identity(source_sha, tokenizer_sha, dim) != identity:
            raise StaticModelError(f"{self.path / META_FILE}: its identity does not match its parameters; {hint}")
        if expected_sha256 is not None and identity != expected_sha256:
            raise StaticModelError(
                f"{self.path} is static model {identity[:12]}, expected {expected_sha256[:12]} "
                f"(built from another source or with other parameters); {hint}"
            )

        raw = read_bytes(self.path / EMBEDDINGS_FILE, StaticModelError, hint)
        actual = hashlib.sha256(raw).hexdigest()
        if actual != embeddings_sha:
            raise StaticModelError(
                f"{self.path / EMBEDDINGS_FILE} is damaged: sha256 {actual[:12]}, meta.json records "
                f"{embeddings_sha[:12]}; {hint}"
            )
        tokenizer_path = self.path / TOKENIZER_FILE
        if not tokenizer_path.is_file() or file_sha256(tokenizer_path) != tokenizer_sha:
            raise StaticModelError(f"{tokenizer_path} is missing or damaged; {hint}")
        try:
            matrix = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as exc:
            raise StaticModelError(f"{self.path / EMBEDDINGS_FILE} is not a numpy array ({exc}); {hint}") from exc
        if matrix.dtype != np.float32 or matrix.shape != (vocab_size, dim):
            raise StaticModelError(
                f"{self.path / EMBEDDINGS_FILE} holds {matrix.dtype} {matrix.shape}, expected float32 "
                f"({vocab_size}, {dim}); {hint}"
            )
        matrix.flags.writeable = False
        self._matrix: npt.NDArray[np.float32] = matrix

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The source's tokenizer.json pads and truncates to 128 for the transformer; a mean needs neither.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        unk = tokenizer.token_to_id("[UNK]")
        self._unk_id = -1 if unk is None else int(unk)

        self.model_name = model_name or str(meta.get("model_name") or self.path.name)
        self.weights_sha256 = identity
        self.model_revision = identity[:12]
        self.dim = dim
        self.meta: dict[str, Any] = meta

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        count = len(texts)
        out = np.zeros((count, self.dim), dtype=np.float32)
        if count == 0:
            return out
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=count)
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(lengths.sum()))
        owner = np.repeat(np.arange(count), lengths)
        known = ids != self._unk_id
        ids, owner = ids[known], owner[known]
        if ids.size == 0:
            return out
        counts = np.bincount(owner, minlength=count)
        filled = np.flatnonzero(counts)
        sizes = counts[filled]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        sums = np.empty((filled.size, self.dim), dtype=np.float32)
        # Tokens are grouped by text, so one reduceat sums each text's rows. Gathering the rows a chunk of
        # texts at a time keeps the gathered block small (a whole large batch would be slower, not faster).
        first = 0
        while first < filled.size:
            stop = max(int(np.searchsorted(ends, starts[first] + _CHUNK_TOKENS, side="right")), first + 1)
            lo, hi = starts[first], ends[stop - 1]
            sums[first:stop] = np.add.reduceat(self._matrix[ids[lo:hi]], starts[first:stop] - lo, axis=0)
            first = stop
        out[filled] = sums / sizes[:, None].astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
