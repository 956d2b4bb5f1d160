"""all-MiniLM-L6-v2 served through ONNX Runtime: the torch path's vectors, faster, without torch.

`export_onnx` turns the bundled sentence-transformers model's BERT into an ONNX graph (token embeddings
out), once, with torch; `OnnxEmbedder` then serves it with onnxruntime and the `tokenizers` fast
tokenizer, pooling and normalizing in numpy exactly as sentence-transformers does (mean over the
attention mask, then L2). A server on this backend never imports torch: the model is ready in about
0.6 s instead of 5, and one text embeds in 3.0 ms instead of 8.3 (2 cores, bench/embed_backends.py); at
batch 32 the two are level (the matrix products dominate there, and both run them about as fast).

It serves the same vector space as SentenceTransformerEmbedder: the same model name, revision and weights
sha256 (the source's), so spaces built by one are served by the other. The vectors agree within
ONNX_MAX_ABS_DIFF per component and ONNX_MIN_COSINE (checked by every export on sample texts, and by
tests/test_onnx_backend.py over a few hundred varied ones).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information
from tokenizers import Tokenizer

from registry.embedding.cache import CachedModel, CachingEmbedder
from registry.embedding.sentence import MINILM_NAME, MINILM_SHA256, WeightsMismatch
from registry.files import file_sha256, fsync_dir, fsync_file, read_bytes, read_json_object

# The agreement with the torch path that this backend promises, per text: every component within
# ONNX_MAX_ABS_DIFF of the torch vector's, and a cosine of at least ONNX_MIN_COSINE. Measured over ~300
# varied texts (empty, short, non-ASCII, truncated past 256 tokens; torch 2.13, onnxruntime 1.32, x86-64):
# max abs diff 3.3e-7, min cosine 1 - 1.2e-7, margins of about 300x and 80x, left for other CPUs' kernels.
ONNX_MAX_ABS_DIFF = 1e-4
ONNX_MIN_COSINE = 0.99999

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
EXPORT_FORMAT = 1  # bump when the graph's inputs or outputs change: older exports are then redone
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "token_embeddings"
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json (tokenizer.json itself says 128)

# Texts the export checks the graph on against torch: empty, short, non-ASCII, and one past 256 tokens.
_CHECK_TEXTS = (
    "",
    "summarize a PDF",
    "Traduire ce texte en français, s'il vous plaît: «où est la gare?»",
    "東京の天気を調べて、明日の予報を教えてください 🙂",
    " ".join(["route each customer ticket to the agent that can resolve it fastest"] * 30),
)

_export_lock = threading.Lock()
log = logging.getLogger(__name__)


class OnnxExportError(WeightsMismatch):
    """An ONNX export that is missing, damaged, made from other weights, or off the torch path."""


def onnx_dir(models_dir: Path) -> Path:
    """Where the server keeps the export of the bundled model: <models_dir>/onnx/all-minilm-l6-v2."""
    return models_dir / "onnx" / "all-minilm-l6-v2"


def export_problem(out_dir: Path, source_sha256: str) -> str | None:
    """Why `out_dir` is not a usable export of the weights with `source_sha256`; None when it is."""
    try:
        meta = read_json_object(out_dir, META_FILE, "ONNX export", OnnxExportError)
    except OnnxExportError as exc:
        return str(exc)
    if meta.get("format") != EXPORT_FORMAT:
        return f"{out_dir / META_FILE} is export format {meta.get('format')!r}, this capreg makes {EXPORT_FORMAT}"
    if meta.get("source_weights_sha256") != source_sha256:
        return f"{out_dir} was exported from other weights than {source_sha256[:12]}"
    for name, key in ((ONNX_FILE, "onnx_sha256"), (TOKENIZER_FILE, "tokenizer_sha256")):
        path = out_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if file_sha256(path) != meta.get(key):
            return f"{path} does not match the sha256 in {META_FILE}"
    return None


def export_onnx(model_dir: Path, out_dir: Path, *, expected_sha256: str | None = None) -> Path:
    """Export the sentence-transformers model in `model_dir` to `out_dir`/model.onnx (with tokenizer.json
    and meta.json) and return that path. An export already there of the same weights, intact, is reused.

    Needs torch and transformers (imported here only). Each file is written to a temporary name, fsynced
    and renamed, meta.json last, and meta.json records every file's sha256: a crash or a damaged file
    leaves an export that fails the check and is redone. Processes sharing `out_dir` take a file lock.
    The graph is checked against torch on sample texts before it is installed.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise WeightsMismatch(f"no model.safetensors in {model_dir}: it must be a sentence-transformers model")
    source_sha = file_sha256(weights)
    if expected_sha256 is not None and source_sha != expected_sha256:
        raise WeightsMismatch(f"{weights} has sha256 {source_sha}, expected {expected_sha256}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _export_lock, _dir_lock(out_dir):
        problem = export_problem(out_dir, source_sha)
        if problem is not None:
            log.info("exporting %s to ONNX in %s (%s)", model_dir, out_dir, problem)
            started = time.perf_counter()
            _export(model_dir, out_dir, source_sha)
            log.info("exported to ONNX in %.1f s", time.perf_counter() - started)
    return out_dir / ONNX_FILE


class OnnxEmbedder(CachingEmbedder):
    """Satisfies registry.embedding.base.Embedder, like SentenceTransformerEmbedder: thread-safe, with an
    LRU cache of recent texts; one model call at a time. Imports no torch."""

    def __init__(
        self,
        model_dir: Path,
        onnx_dir: Path,
        *,
        cache_size: int = 10_000,
        max_seq_length: int = MAX_SEQ_LENGTH,
        threads: int | None = None,
        batch_size: int = 64,
        expected_sha256: str | None = MINILM_SHA256,
        model_name: str = MINILM_NAME,
    ):
        """Verify the source weights (their sha256 names the space served) and the export made from them.
        `threads`: ONNX Runtime's intra-op threads (None: one per physical core)."""
        model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise WeightsMismatch(
                f"no model.safetensors in {model_dir}; point --model-path at a sentence-transformers model"
            )
        actual = file_sha256(weights)
        if expected_sha256 is not None and actual != expected_sha256:
            raise WeightsMismatch(
                f"{weights} has sha256 {actual}, expected {expected_sha256}; reinstall the model package "
                "or set CAPREG_MODEL_SHA256 to the hash of the model you mean to serve"
            )
        hint = f"delete {onnx_dir} and export it again (the server does so at start)"
        meta = read_json_object(onnx_dir, META_FILE, "ONNX export", OnnxExportError)
        if meta.get("format") != EXPORT_FORMAT or meta.get("source_weights_sha256") != actual:
            raise OnnxExportError(f"{onnx_dir} is not an export of {weights} (sha256 {actual[:12]}); {hint}")
        raw = read_bytes(onnx_dir / ONNX_FILE, OnnxExportError, hint)  # hashed and loaded from the same bytes
        if hashlib.sha256(raw).hexdigest() != meta.get("onnx_sha256"):
            raise OnnxExportError(f"{onnx_dir / ONNX_FILE} is damaged: its sha256 differs from {META_FILE}; {hint}")
        tokenizer_path = onnx_dir / TOKENIZER_FILE
        if not tokenizer_path.is_file() or file_sha256(tokenizer_path) != meta.get("tokenizer_sha256"):
            raise OnnxExportError(f"{tokenizer_path} is missing or damaged; {hint}")

        self._tokenizer = _tokenizer(tokenizer_path, max_seq_length)
        self._session = _session(raw, threads)
        dim = self._session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            raise OnnxExportError(f"{onnx_dir / ONNX_FILE} has no fixed embedding dimension; {hint}")
        self.dim = dim
        self.model_name = model_name
        self.weights_sha256 = actual
        self.model_revision = actual[:12]
        self.max_seq_length = max_seq_length
        self.meta: dict[str, Any] = meta
        self._batch_size = batch_size
        self._cached = CachedModel(model_name, self.dim, self._encode, cache_size)

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Unit vectors for `texts`, in batches of texts of similar length (less padding to compute)."""
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            vectors[rows] = self._encode_batch([texts[i] for i in rows])
        return vectors

    def _encode_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch_fast(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        hidden: npt.NDArray[np.float32] = self._session.run([OUTPUT_NAME], feed)[0]
        return mean_pool_normalize(hidden, feed["attention_mask"])


def mean_pool_normalize(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """sentence-transformers' Pooling (mean over the attention mask) then Normalize, in float32."""
    weights = mask.astype(np.float32)
    summed = np.einsum("bsd,bs->bd", hidden, weights)
    counts = np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))
    mean = summed / counts
    norms = np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), np.float32(1e-12))
    result: npt.NDArray[np.float32] = (mean / norms).astype(np.float32, copy=False)
    return result


def _tokenizer(path: Path, max_seq_length: int) -> Tokenizer:
    """Truncate at max_seq_length as sentence-transformers does (tokenizer.json says 128), pad to the
    longest text of the batch (tokenizer.json pads every text to a fixed 128)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_seq_length)
    pad_token = "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
    return tokenizer


def _session(model: bytes | str, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _dir_lock(out_dir: Path) -> Iterator[None]:
    """Serializes exports into `out_dir` between processes (replicas sharing a models directory)."""
    with (out_dir / ".export.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _install(out_dir: Path, name: str, write: Callable[[Path], object]) -> None:
    """Write `name` into `out_dir` through `write(tmp_path)`, a temporary name, fsync and rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private; replicas sharing the directory read it
        fsync_file(tmp)
        tmp.replace(out_dir / name)
    finally:
        tmp.unlink(missing_ok=True)


def _export(model_dir: Path, out_dir: Path, source_sha: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings

    import torch
    from transformers import AutoModel

    class TokenEmbeddings(torch.nn.Module):
        """The BERT's last hidden state, under the input names the embedder feeds."""

        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden: torch.Tensor = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return hidden

    # Eager attention: plain matmuls and a softmax, which trace cleanly and which ONNX Runtime fuses.
    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    module = TokenEmbeddings(bert).eval()
    tokenizer = _tokenizer(model_dir / TOKENIZER_FILE, MAX_SEQ_LENGTH)
    sample = tokenizer.encode_batch_fast(list(_CHECK_TEXTS))
    inputs = {
        "input_ids": np.array([e.ids for e in sample], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in sample], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in sample], dtype=np.int64),
    }
    args = tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}

    def write_onnx(tmp: Path) -> None:
        # The TorchScript exporter: the torch.export one needs onnxscript, and this graph is static. It
        # warns (deprecation, tracer notes about Python-side shape checks that hold for any input here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
                external_data=False,
                do_constant_folding=True,
            )
        import onnx

        onnx.checker.check_model(str(tmp))
        module.eval()  # the exporter puts the module back in the mode it found it in; make sure
        with torch.inference_mode():
            expected = mean_pool_normalize(module(*args).numpy(), inputs["attention_mask"])
        got = mean_pool_normalize(_session(str(tmp), None).run([OUTPUT_NAME], inputs)[0], inputs["attention_mask"])
        diff = float(np.abs(got - expected).max())
        cosine = float((got * expected).sum(axis=1).min())
        if diff > ONNX_MAX_ABS_DIFF or cosine < ONNX_MIN_COSINE:
            raise OnnxExportError(
                f"the ONNX export of {model_dir} is off the torch path (max abs diff {diff:.2e}, "
                f"min cosine {cosine:.7f}; allowed {ONNX_MAX_ABS_DIFF:.0e}, {ONNX_MIN_COSINE})"
            )

    _install(out_dir, ONNX_FILE, write_onnx)
    _install(out_dir, TOKENIZER_FILE, lambda tmp: shutil.copyfile(model_dir / TOKENIZER_FILE, tmp))
    meta = {
        "format": EXPORT_FORMAT,
        "source_path": str(model_dir),
        "source_weights_sha256": source_sha,
        "onnx_sha256": file_sha256(out_dir / ONNX_FILE),
        "tokenizer_sha256": file_sha256(out_dir / TOKENIZER_FILE),
        "opset": OPSET,
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "torch_version": str(torch.__version__),
        "onnxruntime_version": str(ort.__version__),
    }
    text = json.dumps(meta, indent=2) + "\n"
    _install(out_dir, META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))  # last: it commits
    fsync_dir(out_dir)
