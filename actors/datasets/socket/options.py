"""The socket dataset's options: `socket.include_localhost`, `include_udp`, `full_scan_interval`,
`stream_buffer_bytes`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.options import ConfigError, boolean, check_known, parse_duration, parse_size

DEFAULT_FULL_SCAN_INTERVAL = 10.0  # seconds between full /proc/*/fd scans for sockets no cheaper step attributed
DEFAULT_STREAM_BUFFER = 16 << 20  # SO_RCVBUFFORCE for the destroy stream (the kernel doubles it)


@dataclass(frozen=True)
class SocketOptions:
    """The dataset's options (`socket.*` settings), defaults as Auditbeat's where it has them."""

    include_localhost: bool = False  # Auditbeat: sockets with a loopback local or remote IP are skipped
    include_udp: bool = False
    full_scan_interval: float = DEFAULT_FULL_SCAN_INTERVAL
    stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER


def parse_options(raw: Any) -> SocketOptions:
    """Read and check `socket.*`; ConfigError naming the key, the value and what is allowed."""
    options = check_known("socket", raw, ("include_localhost", "include_udp", "full_scan_interval",
                                          "stream_buffer_bytes"))
    return SocketOptions(
        include_localhost=boolean("socket.include_localhost", options.get("include_localhost", False)),
        include_udp=boolean("socket.include_udp", options.get("include_udp", False)),
        full_scan_interval=_named("socket.full_scan_interval", parse_duration,
                                  options.get("full_scan_interval", DEFAULT_FULL_SCAN_INTERVAL)),
        stream_buffer_bytes=_named("socket.stream_buffer_bytes", parse_size,
                                   options.get("stream_buffer_bytes", DEFAULT_STREAM_BUFFER)),
    )


def _named(where: str, parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
