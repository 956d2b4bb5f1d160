"""`capreg discover TEXT --watch`: the answer, then a new one each time it changes."""

from __future__ import annotations

import json
import time

from capreg.v1 import discovery_pb2
from capreg_client import CapregClient

from registry.cli import output


def watch_answers(
    client: CapregClient,
    request: discovery_pb2.DiscoverRequest,
    text: str,
    coalesce_ms: int,
    updates: int | None,
    explain: bool,
    as_json: bool,
) -> None:
    """Print each answer as it comes (a table, or one JSON object per line with --json) until `updates`
    answers were printed or the user presses Ctrl-C."""
    printed = 0
    watch = client.watch_discover(request, coalesce_ms=coalesce_ms)
    try:
        for update in watch:
            printed += 1
            if as_json:
                print(json.dumps(output.to_dict(update)), flush=True)
            else:
                why = ", ".join(update.reasons)
                output.console.print(f"[bold]answer {printed}[/bold] at {time.strftime('%H:%M:%S')} ({why})")
                output.console.print(output.matches_table(update.answer, text))
                if explain:
                    output.console.print(output.explanation_table(update.answer))
            if updates is not None and printed >= updates:
                return
    except KeyboardInterrupt:
        pass
    finally:
        watch.cancel()
