"""multiprocessing's forkserver as the agent runs it: forked from the supervisor (sharing its interpreter and
modules) instead of a new interpreter, and without the resource tracker process beside it."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import multiprocessing.util
import os
import socket
import threading
from multiprocessing.context import BaseContext


def forkserver_context(preload: str) -> BaseContext:
    """multiprocessing's forkserver context, which imports module `preload` once for every child, without the
    resource tracker it would start beside it.

    The tracker is a whole interpreter (about 6.5 MiB of its own) that unlinks the named semaphores and shared
    memory a crashed child leaves behind. hostaudit's processes share neither (their heartbeats and doorbell are
    pipes and a FIFO), so it is pointed at /dev/null: a child's `register` writes there and nothing is started.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    tracker = multiprocessing.resource_tracker._resource_tracker
    if getattr(tracker, "_fd", 0) is None and hasattr(tracker, "_check_alive"):  # not started, and the API known
        tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return context


def fork_forkserver() -> None:
    """Start the forkserver now as a fork of this process, which must have no other thread yet.

    multiprocessing would start a new interpreter (`python -c 'from multiprocessing.forkserver import main'`)
    that imports everything again on its own pages; a fork shares the supervisor's interpreter and modules
    (pykka, logging, multiprocessing...) with the forkserver and, through it, with every child. It then runs
    multiprocessing's own forkserver loop. If it is ever started again (it died), multiprocessing starts it
    its own way. Does nothing when it already runs or this process has threads.
    """
    server = multiprocessing.forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None or threading.active_count() > 1:
            return
        with socket.socket(socket.AF_UNIX) as listener:
            address = multiprocessing.connection.arbitrary_address("AF_UNIX")
            listener.bind(address)
            os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()  # every client holds the write end; the forkserver exits at its EOF
            pid = os.fork()
            if pid == 0:
                _serve(listener.fileno(), alive_r, server._preload_modules)
            os.close(alive_r)
        server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid


def _serve(listener: int, alive_r: int, preload: list[str]) -> None:
    """The forked forkserver's life: keep only its own descriptors (not the data lock, nor the alive pipe's write
    end), then multiprocessing's loop; never return into the supervisor's code."""
    try:
        keep = {0, 1, 2, listener, alive_r}
        for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass  # the listing's own descriptor, already closed
        multiprocessing.forkserver.main(listener, alive_r, preload)
    finally:
        os._exit(0)
