"""The embedding micro-batcher: a lone text goes at once; texts that arrive while a batch runs go together
as the next batch; cached texts skip the model; a failing batch fails its callers and the next batch still
runs; and the real model's batched vectors equal its one-at-a-time vectors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from registry.embedding.batcher import EmbedBatcher
from registry.embedding.sentence import SentenceTransformerEmbedder, bundled_model_path

DIM = 8


class GatedEmbedder:
    """Deterministic vectors; each call can be held until the test opens the gate, and is recorded."""

    model_name = "gated"
    model_revision = "1"
    weights_sha256 = "0" * 64
    dim = DIM

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.cache: dict[str, npt.NDArray[np.float32]] = {}

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        v = np.zeros(DIM, dtype=np.float32)
        v[len(text) % DIM] = 1.0
        return v

    def cached(self, text: str) -> npt.NDArray[np.float32] | None:
        return self.cache.get(text)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        self.entered.release()
        assert self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the model fell over")
        return np.stack([self.vector(t) for t in texts])


async def wait_entered(embedder: GatedEmbedder) -> None:
    assert await asyncio.to_thread(embedder.entered.acquire, True, 10)


def test_a_lone_text_goes_at_once_and_the_rest_queue_into_one_batch() -> None:
    async def scenario() -> None:
        embedder = GatedEmbedder()
        batcher = EmbedBatcher(embedder, max_batch=64)
        embedder.gate.clear()
        first = asyncio.ensure_future(batcher.embed("a"))
        await wait_entered(embedder)  # the first batch is in the model, holding
        others = [asyncio.ensure_future(batcher.embed(f"text {i}")) for i in range(10)]
        others.append(asyncio.ensure_future(batcher.embed("text 3")))  # a duplicate shares its slot
        await asyncio.sleep(0)  # let them all enqueue
        embedder.gate.set()
        vectors = await asyncio.gather(first, *others)
        assert embedder.calls[0] == ["a"]
        assert embedder.calls[1] == [f"text {i}" for i in range(10)]  # one batch, duplicates once
        assert len(embedder.calls) == 2 and (batcher.batches, batcher.texts) == (2, 11)
        for text, vector in zip(["a", *[f"text {i}" for i in range(10)], "text 3"], vectors, strict=True):
            assert np.array_equal(vector, embedder.vector(text))

    asyncio.run(scenario())


def test_batches_never_exceed_the_limit() -> None:
    async def scenario() -> None:
        embedder = GatedEmbedder()
        batcher = EmbedBatcher(embedder, max_batch=4)
        embedder.gate.clear()
        first = asyncio.ensure_future(batcher.embed("first"))
        await wait_entered(embedder)
        rest = [asyncio.ensure_future(batcher.embed(f"t{i}")) for i in range(10)]
        await asyncio.sleep(0)
        embedder.gate.set()
        await asyncio.gather(first, *rest)
        assert [len(c) for c in embedder.calls] == [1, 4, 4, 2]

    asyncio.run(scenario())


def test_cached_texts_skip_the_model() -> None:
    async def scenario() -> None:
        embedder = GatedEmbedder()
        embedder.cache["seen"] = embedder.vector("seen")
        batcher = EmbedBatcher(embedder)
        assert np.array_equal(await batcher.embed("seen"), embedder.vector("seen"))
        assert embedder.calls == []

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    async def scenario() -> None:
        embedder = GatedEmbedder()
        batcher = EmbedBatcher(embedder)
        embedder.gate.clear()
        embedder.fail_next = True
        doomed = asyncio.ensure_future(batcher.embed("doomed"))
        await wait_entered(embedder)
        later = asyncio.ensure_future(batcher.embed("later"))
        await asyncio.sleep(0)
        embedder.gate.set()
        with pytest.raises(RuntimeError, match="fell over"):
            await doomed
        assert np.array_equal(await later, embedder.vector("later"))

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_stall_the_others() -> None:
    async def scenario() -> None:
        embedder = GatedEmbedder()
        batcher = EmbedBatcher(embedder)
        embedder.gate.clear()
        first = asyncio.ensure_future(batcher.embed("first"))
        await wait_entered(embedder)
        gone = asyncio.ensure_future(batcher.embed("gone"))
        kept = asyncio.ensure_future(batcher.embed("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        embedder.gate.set()
        await first
        assert np.array_equal(await kept, embedder.vector("kept"))
        assert embedder.calls[1] == ["kept"]

    asyncio.run(scenario())


def test_batched_vectors_equal_one_at_a_time_with_the_real_model(embedder: SentenceTransformerEmbedder) -> None:
    texts = [f"route invoice number {i} to the accounts payable team of region {i % 7}" for i in range(40)]
    alone = np.stack([embedder.embed([t])[0].copy() for t in texts])
    fresh = SentenceTransformerEmbedder(bundled_model_path(), cache_size=0)  # nothing cached: all go batched

    async def together() -> list[npt.NDArray[np.float32]]:
        return await EmbedBatcher(fresh).embed_many(texts)

    batched = np.stack(asyncio.run(together()))
    assert np.allclose(batched, alone, atol=1e-5), float(np.abs(batched - alone).max())


def test_a_model_answer_of_the_wrong_shape_fails_its_callers_instead_of_stranding_them() -> None:
    class Short(GatedEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return super().embed(texts)[:-1]  # one row short

    async def scenario() -> None:
        batcher = EmbedBatcher(Short())
        results = await asyncio.gather(batcher.embed("a"), batcher.embed("b"), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results), results

    asyncio.run(asyncio.wait_for(scenario(), 30))
