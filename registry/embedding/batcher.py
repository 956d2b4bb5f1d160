"""Micro-batching of embedding calls: concurrent Discovers by text share one model call.

A model embeds 32 texts in a batch for little more than the cost of one, because the per-call overhead
(tokenizer, framework dispatch, thread hop) dominates short texts. The batcher sends a text at once when no
batch is running, so a lone request waits for nothing; while a batch runs, the texts that arrive queue up
and go together as the next batch the moment it finishes. Under load, batches grow by themselves to what
the load offers (at most `max_batch`); there is no fixed wait. Texts in the embedder's cache never queue.
Only the event-loop thread calls `embed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from registry.embedding.base import Embedder

Vector = npt.NDArray[np.float32]


class EmbedBatcher:
    def __init__(self, embedder: Embedder, max_batch: int = 64):
        self._embedder = embedder
        self._max_batch = max_batch
        self._queue: list[tuple[str, asyncio.Future[Vector]]] = []
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # model calls made, for the benchmark and the tests
        self.texts = 0  # texts they embedded

    async def embed(self, text: str) -> Vector:
        cached = getattr(self._embedder, "cached", None)
        if cached is not None:
            hit: Vector | None = cached(text)
            if hit is not None:
                return hit
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._queue.append((text, future))
        if not self._running:
            self._start_next()
        return await future

    async def embed_many(self, texts: Sequence[str]) -> list[Vector]:
        return list(await asyncio.gather(*(self.embed(text) for text in texts)))

    def _start_next(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        batch = [(text, future) for text, future in batch if not future.cancelled()]
        if not batch:
            self._running = False
            if self._queue:
                self._start_next()
            return
        self._running = True
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)  # a task nobody holds may be collected while it runs
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future[Vector]]]) -> None:
        unique = list(dict.fromkeys(text for text, _ in batch))
        try:
            vectors = await asyncio.to_thread(self._embedder.embed, unique)
            by_text = {text: vector.copy() for text, vector in zip(unique, vectors, strict=True)}  # not views
            self.batches += 1
            self.texts += len(unique)
            for text, future in batch:
                if not future.done():
                    future.set_result(by_text[text])
        except BaseException as error:  # the model failed, returned the wrong rows, or the loop is closing
            failure = error if isinstance(error, Exception) else RuntimeError("the embedding batch was cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(error, Exception):
                raise
        finally:
            self._running = False
            if self._queue:
                self._start_next()
