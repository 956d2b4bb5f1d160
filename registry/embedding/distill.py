"""Distil a static (model2vec-style) embedding model from a sentence-transformers model, offline.

Recipe `RECIPE_VERSION` (see docs in registry/embedding/static.py for how the result is used):

1. Run the source transformer on ``[CLS] token [SEP]`` for every token id of its WordPiece vocabulary
   (batches of 1024, CPU, inference mode) and take the mean of the three output hidden states.
2. Centre the vectors and project them on their first `dim` principal components (numpy SVD of the
   scatter matrix; each component's sign fixed so that its largest-magnitude coordinate is positive,
   so the result does not depend on the LAPACK build's sign choice).
3. Multiply row i by log(1 + i) (Zipf weighting by vocabulary rank, as model2vec does: this vocabulary
   lists word pieces roughly by frequency, so frequent ones weigh less) and store float32.

The model's identity is the sha256 of (the source weights' sha256, the source tokenizer's sha256, the
recipe version, the parameters), not of the matrix: it is the same on every machine even where float
bits differ. The matrix's own sha256 is recorded in meta.json so a damaged file is refused at load.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.files import file_sha256, fsync_dir

RECIPE_VERSION = "capreg-static-v1"
DEFAULT_DIM = 256
BATCH_SIZE = 1024
EMBEDDINGS_FILE = "embeddings.npy"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"

ProgressCallback = Callable[[int, int], None]
"""Called with (tokens done, tokens in the vocabulary) after each batch."""


def static_identity(source_weights_sha256: str, tokenizer_sha256: str, dim: int) -> str:
    """The reproducible identity (`weights_sha256`) of the static model a source and parameters give."""
    recipe = {
        "recipe": RECIPE_VERSION,
        "source_weights_sha256": source_weights_sha256,
        "tokenizer_sha256": tokenizer_sha256,
        "dim": dim,
        "pooling": "mean([CLS] token [SEP])",
        "reduction": "pca",
        "weighting": "log1p(rank)",
        "dtype": "float32",
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def distill_static_model(
    out_dir: Path,
    source_path: Path,
    dim: int = DEFAULT_DIM,
    progress: ProgressCallback | None = None,
    *,
    model_name: str = "",
    replace: bool = False,
) -> dict[str, Any]:
    """Write embeddings.npy, tokenizer.json and meta.json to `out_dir` and return the meta.

    Everything is written to a temporary directory beside `out_dir` and renamed into place, so a
    crash never leaves a half-written model. An existing `out_dir` is kept unless `replace`: when
    another process finished the same model first, that one stays and its meta is returned.
    """
    weights = source_path / "model.safetensors"
    tokenizer_file = source_path / TOKENIZER_FILE
    for needed in (weights, tokenizer_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: the source must be a sentence-transformers model directory")
    source_sha = file_sha256(weights)
    tokenizer_sha = file_sha256(tokenizer_file)

    states = token_states(source_path, progress)
    if not 0 < dim <= states.shape[1]:
        raise ValueError(f"dim must be in 1..{states.shape[1]} (the source's dimension), got {dim}")
    matrix = reduce_states(states, dim)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with (tmp / EMBEDDINGS_FILE).open("wb") as fh:
            np.save(fh, matrix, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
        meta: dict[str, Any] = {
            "model_name": model_name,
            "recipe_version": RECIPE_VERSION,
            "identity_sha256": static_identity(source_sha, tokenizer_sha, dim),
            "dim": dim,
            "vocab_size": int(matrix.shape[0]),
            "embeddings_sha256": file_sha256(tmp / EMBEDDINGS_FILE),
            "tokenizer_sha256": tokenizer_sha,
            "source_path": str(source_path),
            "source_weights_sha256": source_sha,
            "built_with": {
                "numpy": np.__version__,
                "torch": _torch_version(),
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        fsync_dir(tmp)
        _install(tmp, out_dir, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    installed: dict[str, Any] = json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
    return installed


def token_states(
    source_path: Path, progress: ProgressCallback | None = None, *, ids: Sequence[int] | None = None
) -> npt.NDArray[np.float64]:
    """Step 1: mean output hidden state of [CLS] id [SEP] for every vocabulary id (or only `ids`, in
    batches of BATCH_SIZE from their start), as float64 rows in the order of the ids."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source_path), device="cpu", local_files_only=True)
    transformer: Any = model[0].auto_model
    transformer.eval()
    tokenizer: Any = model.tokenizer
    wanted = torch.arange(int(transformer.config.vocab_size)) if ids is None else torch.tensor(list(ids))
    total = len(wanted)
    cls_id, sep_id = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
    states = np.empty((total, int(transformer.config.hidden_size)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, total, BATCH_SIZE):
            batch_ids = wanted[start : start + BATCH_SIZE].to(torch.long)
            batch = torch.stack(
                [torch.full_like(batch_ids, cls_id), batch_ids, torch.full_like(batch_ids, sep_id)],
                dim=1,
            )
            hidden = transformer(
                input_ids=batch,
                attention_mask=torch.ones_like(batch),
                token_type_ids=torch.zeros_like(batch),
            ).last_hidden_state
            states[start : start + len(batch_ids)] = hidden.mean(dim=1).double().numpy()
            if progress is not None:
                progress(start + len(batch_ids), total)
    return states


def reduce_states(states: npt.NDArray[np.float64], dim: int) -> npt.NDArray[np.float32]:
    """Steps 2 and 3: centre, PCA to `dim` (signs fixed), Zipf weighting by rank, float32."""
    centred = states - states.mean(axis=0, keepdims=True)
    # The principal axes are the right singular vectors of the centred rows, which are the singular
    # vectors of their (symmetric, positive semi-definite) scatter matrix: an SVD of hidden x hidden
    # instead of vocabulary x hidden, about ten times faster, and sorted by variance either way.
    _, _, components = np.linalg.svd(centred.T @ centred)
    components = np.ascontiguousarray(components[:dim])
    # SVD leaves each component's sign to the LAPACK build: make the largest coordinate positive.
    pivots = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(dim), pivots])[:, None]
    projected = centred @ components.T
    projected *= np.log1p(np.arange(projected.shape[0], dtype=np.float64))[:, None]
    return np.ascontiguousarray(projected, dtype=np.float32)


def _install(tmp: Path, out_dir: Path, replace: bool) -> None:
    if not out_dir.exists():
        try:
            tmp.rename(out_dir)
            fsync_dir(out_dir.parent)
            return
        except OSError:
            if not out_dir.exists():
                raise
            # Another process installed it between our check and our rename.
    if not replace:
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    tmp.rename(out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
