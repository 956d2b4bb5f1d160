"""`capreg agents apply`'s bulk path: a manifest sent as RegisterAgents batches, and a refused batch's error
told in the manifest's terms."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from capreg_client import CapregClient, CapregError

# Refusals: the server answered that the batch is wrong, so nothing of it was written.
REFUSALS = {"INVALID_ARGUMENT", "ABORTED", "FAILED_PRECONDITION", "PERMISSION_DENIED", "NOT_FOUND", "ALREADY_EXISTS"}
BATCH_TIMEOUT_S = 60.0  # at least, per batch: a hundred agents' texts take seconds to embed


def register_in_batches(
    client: CapregClient,
    agents: list[Any],
    batch_size: int,
    parallel: int,
    advanced: Callable[[int], None],
    timeout: float,
) -> list[Any]:
    """Register every agent through RegisterAgents, `parallel` batches in flight (the channel is
    thread-safe); answers in manifest order. After a failure (or Ctrl-C) no further batch starts; the
    error names the manifest entry at fault and how many agents the other batches wrote."""
    batches = [agents[i : i + batch_size] for i in range(0, len(agents), batch_size)]
    stopped = threading.Event()
    written = 0
    lock = threading.Lock()

    def register(batch: list[Any]) -> list[Any] | None:
        nonlocal written
        if stopped.is_set():
            return None
        try:
            answer = client.register_agents(batch, timeout=max(timeout, BATCH_TIMEOUT_S))
        except BaseException:
            stopped.set()
            raise
        with lock:
            written += len(batch)
        advanced(len(batch))
        return list(answer.results)

    failure: tuple[int, CapregError] | None = None
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="apply") as pool:
        futures = [pool.submit(register, batch) for batch in batches]
        try:
            for n, future in enumerate(futures):
                try:
                    future.result()
                except CapregError as refused:
                    failure = failure or (n, refused)
        except BaseException:  # Ctrl-C, or a bug: start nothing more
            stopped.set()
            for future in futures:
                future.cancel()
            raise
    if failure is not None:
        first, cause = failure
        raise BatchFailed(first * batch_size, batches[first], cause, written)
    return [result for future in futures for result in future.result() or ()]


class BatchFailed(Exception):
    """A batch failed. The message names the manifest entries the request's agents[i] paths point at, and
    says what was written: nothing of a refused batch; maybe all of one whose answer was lost."""

    def __init__(self, start: int, batch: list[Any], error: CapregError, written: int):
        self.error = error
        text = f"{error.message} [field: {error.field}]" if error.field else error.message

        def entry(match: re.Match[str]) -> str:
            index = int(match.group(1))
            if index >= len(batch):
                return match.group(0)
            return f"manifest agent #{start + index + 1} ({batch[index].name})" + (" " if match.group(2) else "")

        text = re.sub(r"agents\[(\d+)\](\.(?:agent\.)?)?", entry, text)
        span = f"manifest agents #{start + 1}-#{start + len(batch)}"
        if error.code.name in REFUSALS:
            outcome = f"Nothing of the batch holding {span} was written"
            advice = "Fix the manifest and apply it again (applying is idempotent)."
        else:
            outcome = f"The batch holding {span} may or may not have been written"
            advice = "Apply the manifest again: applying is idempotent."
        super().__init__(f"{error.code.name}: {text}\n{outcome}; {written} agents in other batches were. {advice}")
