"""The socket dataset's options, declared once with their defaults: `socket.include_localhost`,
`include_udp`, `full_scan_interval`, `stream_buffer_bytes`."""

from __future__ import annotations

from typing import Any

from actors.options import Boolean, DatasetOptions, Duration, Size, validate

DEFAULT_STREAM_BUFFER = 16 << 20  # SO_RCVBUFFORCE for the destroy stream (the kernel doubles it)


class SocketOptions(DatasetOptions):
    """The dataset's options (`socket.*` settings), defaults as Auditbeat's where it has them."""

    # Report sockets whose local or remote address is loopback (Auditbeat skips them).
    include_localhost: Boolean = False
    # Also report UDP sockets (listening and connected), with the same fields as TCP.
    include_udp: Boolean = False
    # How often, at most, all of /proc/*/fd is scanned for sockets no cheaper step attributed (seconds).
    full_scan_interval: Duration() = 10.0
    # Receive buffer of the sock_diag destroy subscription (every closed socket, even between two polls).
    stream_buffer_bytes: Size = DEFAULT_STREAM_BUFFER


def parse_options(raw: Any) -> SocketOptions:
    """Read and check `socket.*`; ConfigError naming the key, the value and what is allowed."""
    return validate(SocketOptions, raw, "socket")


SCHEMA = SocketOptions  # what the dataset catalog hands the configuration
