"""The root supervisor actor: starts one OS process per dataset plus the producer, watches, restarts."""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable

import pykka

from actors.runtime.agent import AgentIdentity
from actors.config import Settings
from actors.outputs.routing import routing_fields
from actors.runtime.doorbell import doorbell_name
from actors.runtime.monitoring import build_stats, log_stats, serve
from actors.runtime.worker import CollectorSpec, ProducerSpec, collector_main, producer_main

log = logging.getLogger("hostaudit.supervisor")

PRODUCER = "producer"
PRODUCER_HANG_TIMEOUT = 120.0
WATCH_INTERVAL = 0.25
COLLECTOR_STOP_SECONDS = 3.0
PRODUCER_STOP_SECONDS = 6.0
STATS_LOG_INTERVAL = 30.0
FAILED_RETRY_MAX = 3600.0
DUPLICATE_SIGNAL_SECONDS = 1.0  # GNU timeout signals the process and then its group: one request, not two


def describe_exit(exitcode: int | None) -> str:
    """`exit code 1`, or `killed by SIGKILL` for a negative multiprocessing exit code."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class Child:
    """One supervised OS process (a dataset's collector or the producer) and its restart history."""

    name: str
    target: Callable[..., None]
    spec: Any
    hang_timeout: float
    process: BaseProcess | None = None
    heartbeat: multiprocessing.connection.Connection | None = None
    progress: int = -1
    progress_at: float = 0.0
    last_heartbeat: dict[str, Any] = field(default_factory=dict)
    restart_times: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0
    attempt: int = 0
    failed: bool = False
    failed_retries: int = 0  # retries after being marked failed, for the doubling cool-down
    hang_killed: bool = False
    exit_pending: bool = False  # started, and its exit not yet handled by the supervisor

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None


@dataclass(frozen=True)
class Watch:
    """Message: wait briefly for child exits and heartbeats, then check for hangs."""


@dataclass(frozen=True)
class Restart:
    name: str


@dataclass(frozen=True)
class RetryFailed:
    """Message: a failed child's cool-down is over: start it again with a fresh restart budget."""

    name: str


@dataclass(frozen=True)
class Shutdown:
    """Message: stop collectors, let the producer flush, stop it (answers when done)."""


@dataclass(frozen=True)
class Status:
    """Message: answer a snapshot of every child's state."""


class SupervisorActor(pykka.ThreadingActor):
    """Erlang-style one-for-one supervision of OS processes.

    Death is noticed at once through each process's sentinel; a hang when a child's heartbeats show no
    progress for its hang timeout. A child is restarted with exponential backoff; past
    `max_restarts` restarts within `max_restarts_window` it is marked failed and the others run on.
    """

    def __init__(self, settings: Settings, context: BaseContext, agent: AgentIdentity,
                 stop_requested: threading.Event | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.stop_requested = stop_requested or threading.Event()  # set by the signal handler, at once
        self.context = context
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._timers: list[threading.Timer] = []
        doorbell = doorbell_name(settings.path_data)
        producer_spec = ProducerSpec(settings.path_data, settings.output.type, dict(settings.output.options),
                                     settings.logging_level, doorbell)
        self.children[PRODUCER] = Child(PRODUCER, producer_main, producer_spec,
                                        settings.supervisor.hang_timeout or PRODUCER_HANG_TIMEOUT)
        routing = routing_fields(settings.output.type, settings.output.options)  # once, for every collector
        for name, dataset in settings.datasets.items():
            spec = CollectorSpec(
                dataset=name, period=dataset.period, state_period=dataset.state_period,
                options=dict(dataset.options), hostfs=settings.hostfs, path_data=settings.path_data,
                agent=agent, spool_max_bytes=settings.queue_disk_max_size,
                hang_file=settings.debug_hang_file, log_level=settings.logging_level, doorbell=doorbell,
                routing_fields=routing,
            )
            self.children[name] = Child(name, collector_main, spec, settings.hang_timeout_for(name))

    # --- lifecycle -------------------------------------------------------------------------------------
    def on_start(self) -> None:
        for child in self.children.values():
            self._start(child)
        self.actor_ref.tell(Watch())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Watch):
            self._watch_once()
            if not self.stopping:
                self.actor_ref.tell(Watch())
        elif isinstance(message, Restart):
            child = self.children[message.name]
            if not self.stopping and not child.failed and not child.alive:
                self._start(child)
        elif isinstance(message, RetryFailed):
            child = self.children[message.name]
            if not self.stopping and child.failed and not child.alive:
                child.failed, child.attempt = False, 0
                child.restart_times.clear()
                log.warning("%s: retrying after its cool-down (retry %d after being marked failed)", child.name,
                            child.failed_retries)
                self._start(child)
        elif isinstance(message, Shutdown):
            self._shutdown()
        elif isinstance(message, Status):
            return {name: {"alive": child.alive, "failed": child.failed, "restarts": child.restarts,
                           "pid": child.process.pid if child.process else None, **child.last_heartbeat}
                    for name, child in self.children.items()}
        return None

    def _start(self, child: Child) -> None:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=child.target, args=(child.spec, sender),
                                       name=f"hostaudit-{child.name}")
        process.start()
        sender.close()  # only the child holds the sending end: its death closes the pipe
        child.process, child.heartbeat, child.exit_pending = process, receiver, True
        child.progress, child.progress_at, child.hang_killed = -1, time.monotonic(), False
        log.info("started %s (pid %d)", child.name, process.pid)

    # --- watching --------------------------------------------------------------------------------------
    def _watch_once(self) -> None:
        running = [child for child in self.children.values() if child.exit_pending]
        waitables: dict[Any, tuple[Child, str]] = {}
        for child in running:
            assert child.process is not None and child.heartbeat is not None
            waitables[child.process.sentinel] = (child, "exit")
            waitables[child.heartbeat] = (child, "heartbeat")
        ready = multiprocessing.connection.wait(list(waitables), timeout=WATCH_INTERVAL) if waitables else []
        if not waitables:
            time.sleep(WATCH_INTERVAL)
        for handle in ready:
            child, kind = waitables[handle]
            if kind == "heartbeat":
                self._read_heartbeats(child)
        for handle in ready:
            child, kind = waitables[handle]
            if kind == "exit":
                self._exited(child)
        self._check_hangs()

    def _read_heartbeats(self, child: Child) -> None:
        assert child.heartbeat is not None
        try:
            while child.heartbeat.poll():
                beat = child.heartbeat.recv()
                child.last_heartbeat = beat
                if beat.get("progress") != child.progress:
                    child.progress, child.progress_at = beat.get("progress", 0), time.monotonic()
        except (EOFError, OSError):
            pass  # the child is exiting; its sentinel reports it

    def _check_hangs(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.exit_pending and not child.hang_killed and now - child.progress_at > child.hang_timeout:
                assert child.process is not None
                log.error("%s made no progress for %.0f s (supervisor.hang_timeout); killing pid %d",
                          child.name, now - child.progress_at, child.process.pid)
                child.hang_killed = True
                child.process.kill()
            if child.attempt and child.restart_times and now - child.restart_times[-1] > \
                    self.settings.supervisor.max_restarts_window and child.alive:
                child.attempt = 0  # healthy for a whole window: the next failure starts the backoff over
                child.failed_retries = 0

    def _exited(self, child: Child) -> None:
        assert child.process is not None
        child.exit_pending = False
        child.process.join(0)
        reason = describe_exit(child.process.exitcode)
        if child.hang_killed:
            reason = f"hung, {reason}"
        if child.heartbeat is not None:
            child.heartbeat.close()
        if self.stopping or self.stop_requested.is_set():
            log.info("%s exited (%s) while stopping", child.name, reason)
            return
        supervisor = self.settings.supervisor
        now = time.monotonic()
        while child.restart_times and now - child.restart_times[0] > supervisor.max_restarts_window:
            child.restart_times.popleft()
        if len(child.restart_times) >= supervisor.max_restarts:
            child.failed = True
            cooldown = min(FAILED_RETRY_MAX, supervisor.failed_retry * 2 ** child.failed_retries)
            child.failed_retries += 1
            log.error("%s failed: %d restarts within %.0f s (supervisor.max_restarts); last exit: %s; "
                      "the other datasets keep running; trying it again in %.0f s (supervisor.failed_retry)",
                      child.name, len(child.restart_times), supervisor.max_restarts_window, reason, cooldown)
            self._after(cooldown, RetryFailed(child.name))
            return
        child.restart_times.append(now)
        child.attempt += 1
        child.restarts += 1
        delay = min(supervisor.backoff_max, supervisor.backoff_initial * 2 ** (child.attempt - 1))
        log.warning("%s exited (%s); restart attempt %d in %.1f s", child.name, reason, child.attempt, delay)
        self._after(delay, Restart(child.name))

    def _after(self, delay: float, message: Any) -> None:
        """Send `message` to this actor after `delay` seconds (cancelled by a shutdown)."""
        timer = threading.Timer(delay, self.actor_ref.tell, (message,))
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    # --- stopping --------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.stopping = True
        for timer in self._timers:
            timer.cancel()
        collectors = [c for c in self.children.values() if c.name != PRODUCER and c.alive]
        self._stop_all(collectors, COLLECTOR_STOP_SECONDS)
        producer = self.children[PRODUCER]
        if producer.alive:
            self._stop_all([producer], PRODUCER_STOP_SECONDS)
        log.info("all processes stopped")

    @staticmethod
    def _stop_all(children: list[Child], seconds: float) -> None:
        for child in children:
            assert child.process is not None
            child.process.terminate()
        deadline = time.monotonic() + seconds
        for child in children:
            assert child.process is not None
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                log.warning("%s did not stop within %.0f s; killing it", child.name, seconds)
                child.process.kill()
                child.process.join(1)

    def child_pids(self) -> list[int]:
        return [c.process.pid for c in self.children.values() if c.alive and c.process and c.process.pid]


def run(settings: Settings, agent: AgentIdentity) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT; return the exit code.

    Whatever happens here, the children are stopped before this returns: no collector is left running
    without its supervisor (a failed HTTP bind exits 1 with one line, after stopping them).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["actors.runtime.preload"])
    stop_requested = threading.Event()
    known_pids: list[int] = []
    first_signal: list[tuple[int, float]] = []

    def on_signal(signum: int, frame: Any) -> None:
        if first_signal:
            first_signum, first_at = first_signal[0]
            if signum == first_signum and time.monotonic() - first_at < DUPLICATE_SIGNAL_SECONDS:
                return  # the same request delivered twice (to the process and to its group)
            for pid in known_pids:  # a second signal: leave at once
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone
            os._exit(128 + signum)
        first_signal.append((signum, time.monotonic()))
        log.info("received %s; stopping (send it again to exit at once)", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    supervisor = SupervisorActor.start(settings, context, agent, stop_requested)
    server = None
    try:
        def current_stats() -> dict[str, Any]:
            return build_stats(supervisor.ask(Status(), timeout=5), settings.path_data / "spool")

        if settings.http_enabled:
            try:
                server = serve(settings.http_host, settings.http_port, current_stats)
            except OSError as error:
                log.error("http: cannot serve %s:%d (%s); stopping", settings.http_host, settings.http_port,
                          error.strerror or error)
                return 1
        next_stats_log = time.monotonic() + STATS_LOG_INTERVAL
        while not stop_requested.wait(1.0):
            known_pids[:] = supervisor.proxy().child_pids().get(timeout=5)
            if time.monotonic() >= next_stats_log:
                next_stats_log += STATS_LOG_INTERVAL
                log_stats(current_stats())
        return 0
    finally:
        if server is not None:
            server.shutdown()
        try:
            known_pids[:] = supervisor.proxy().child_pids().get(timeout=5)
            supervisor.ask(Shutdown(), timeout=15)
        finally:
            supervisor.stop()
