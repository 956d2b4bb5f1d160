"""paused_gc: nested and overlapping pauses leave the collector as the first one found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from registry.index.gc_pause import paused_gc


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_overlapping_pauses_restore_the_state_only_when_the_last_one_ends(enabled_before: bool) -> None:
    """Two loads in two threads: A starts, B starts, A ends (the collector must stay off for B), B ends."""
    (gc.enable if enabled_before else gc.disable)()
    first, second = paused_gc(), paused_gc()
    first.__enter__()
    assert not gc.isenabled()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # B is still loading
    second.__exit__(None, None, None)
    assert gc.isenabled() == enabled_before


def test_a_pause_ends_even_when_the_load_fails() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("the snapshot did not parse")
    assert gc.isenabled()
