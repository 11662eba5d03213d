"""The console output: one ECS JSON object per line on stdout (the default output)."""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO, Mapping, Sequence

from actors.outputs import Outgoing, OutputError, Rejection


class ConsoleOutput:
    """Writes each event as one line on stdout (pretty-printed when `pretty: true`)."""

    def __init__(self, options: Mapping[str, Any], stream: BinaryIO | None = None) -> None:
        self.pretty = bool(options.get("pretty", False))
        self.stream = stream if stream is not None else sys.stdout.buffer

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        lines = [event.payload for event in batch]
        if self.pretty:
            lines = [json.dumps(json.loads(line), indent=2, ensure_ascii=False).encode() for line in lines]
        try:
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()
        except OSError as error:
            raise OutputError(f"console output: cannot write to stdout: {error}") from error
        return ()

    def close(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            pass  # stdout already gone (e.g. a closed pipe); nothing left to flush to
