"""The LRU vector cache and the one-model-call-at-a-time discipline that every real embedder shares.

The cache's lock guards the cache only, never the model call: the event loop looks texts up (`get`, for the
micro-batcher) while a batch is in the model. A second lock keeps model calls one at a time, because fast
tokenizers are not reentrant and two calls would only fight for the same cores."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from registry.telemetry import record_batch

Vectors = npt.NDArray[np.float32]


class CachedModel:
    def __init__(self, model_name: str, dim: int, encode: Callable[[list[str]], Vectors], cache_size: int):
        self._model_name = model_name
        self._dim = dim
        self._encode = encode  # unique texts -> unit vectors, one row each
        self._size = cache_size
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    def get(self, text: str) -> Vectors | None:
        """The text's vector if it is cached (a repeated task), without calling the model."""
        with self._lock:
            found = self._cache.get(text)
            if found is not None:
                self._cache.move_to_end(text)
            return found

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                cached = self._cache.get(text)
                if cached is None:
                    missing.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = cached
        if missing:
            unique = list(missing)
            with self._model_lock:
                started = time.perf_counter()
                vectors = self._encode(unique)
                record_batch(self._model_name, len(unique), started)
            with self._lock:
                for text, vector in zip(unique, vectors, strict=True):
                    out[missing[text]] = vector
                    self._cache[text] = vector.copy()  # a view would keep the whole batch alive
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return out


class CachingEmbedder:
    """The Embedder surface of a model behind a CachedModel: subclasses set `self._cached` in __init__."""

    _cached: CachedModel

    def cached(self, text: str) -> Vectors | None:
        """The text's vector if it is in the cache (a repeated task), without calling the model."""
        return self._cached.get(text)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self._cached.embed(texts)
