"""One-for-one supervision of OS processes, shared by the agent and the indexer: a pykka root actor that starts
its children, notices a death at once (process sentinel) or a hang (heartbeats without progress), restarts with
backoff and restart intensity, and stops them; and the SIGTERM/SIGINT handling of a supervising process."""

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
from typing import Any, Callable, Protocol

import pykka

log = logging.getLogger("hostaudit.supervisor")

WATCH_MAX_SECONDS = 5.0  # the longest wait between two looks at the children (a hang deadline may come sooner)
FAILED_RETRY_MAX = 3600.0
DUPLICATE_SIGNAL_SECONDS = 1.0  # GNU timeout signals the process and then its group: one request, not two
# A child that stopped cleanly may have had the signal its supervisor is getting too (systemd signals the whole
# group); the supervisor's handler runs on its main thread, maybe after the exit is seen: it has this long to say so.
STOP_SIGNAL_GRACE_SECONDS = 1.0
CLEAN_STOPS = (0, -signal.SIGTERM, -signal.SIGINT)  # the exit codes of a child told to stop


class RestartPolicy(Protocol):
    """How children are restarted (seconds): `actors.config.SupervisorSettings` is one."""

    max_restarts: int
    max_restarts_window: float
    backoff_initial: float
    backoff_max: float
    failed_retry: float


@dataclass(frozen=True)
class RestartSettings:
    """A RestartPolicy of plain values (what the agent's supervisor runs on, copied from its settings)."""

    max_restarts: int
    max_restarts_window: float
    backoff_initial: float
    backoff_max: float
    failed_retry: float


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


class Wakeup:
    """Ends the supervisor's wait for its children at once: a message sent to it is read only between two waits.

    A pipe, not a lock or an event: nothing here can be left held by a participant's death."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # rung already and not yet drained: once is enough

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def ask(self, supervisor: pykka.ActorRef, message: Any, timeout: float) -> Any:
        """Ask `supervisor` (answered within its next turn, not after its current wait) and wait for the answer."""
        answer = supervisor.ask(message, block=False)
        self.ring()  # after the message is in its mailbox: the supervisor wakes and reads it
        return answer.get(timeout=timeout)


@dataclass
class Child:
    """One supervised OS process and its restart history."""

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
    """Message: stop every child (in the order the supervisor defines; answers when done)."""


@dataclass(frozen=True)
class Status:
    """Message: answer a snapshot of every child's state."""


class ProcessSupervisor(pykka.ThreadingActor):
    """Erlang-style one-for-one supervision of OS processes.

    Death is noticed at once through each process's sentinel; a hang when a child's heartbeats show no
    progress for its hang timeout. A child is restarted with exponential backoff; past
    `max_restarts` restarts within `max_restarts_window` it is marked failed and the others run on.
    A subclass fills `children` in its constructor and may order the stop (`_shutdown`).
    """

    others = "the others"  # what keeps running when a child is marked failed, for the log line
    stop_seconds = 6.0  # how long `_shutdown` waits for the children after SIGTERM before killing them

    def __init__(self, policy: RestartPolicy, context: BaseContext,
                 stop_requested: threading.Event | None = None, known_pids: list[int] | None = None,
                 wakeup: Wakeup | None = None) -> None:
        super().__init__()
        self.wakeup = wakeup or Wakeup()  # whoever sends this actor a message rings it (Wakeup.ask)
        self.policy = policy
        self.stop_requested = stop_requested or threading.Event()  # set by the signal handler, at once
        self.known_pids = known_pids  # kept up to date here, when given (StopSignals.known_pids): nobody polls
        self.context = context
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._timers: list[threading.Timer] = []

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
            if not self._stop_under_way() and not child.failed and not child.alive:
                self._start(child)
        elif isinstance(message, RetryFailed):
            child = self.children[message.name]
            if not self._stop_under_way() and child.failed and not child.alive:
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
        self._note_pids()
        log.info("started %s (pid %d)", child.name, process.pid)

    def _note_pids(self) -> None:
        if self.known_pids is not None:
            self.known_pids[:] = self.child_pids()

    # --- watching --------------------------------------------------------------------------------------
    def _watch_once(self) -> None:
        """Wait until a child exits or sends a heartbeat, a message arrives, or the next hang deadline."""
        running = [child for child in self.children.values() if child.exit_pending]
        waitables: dict[Any, tuple[Child | None, str]] = {self.wakeup: (None, "wakeup")}
        for child in running:
            assert child.process is not None and child.heartbeat is not None
            waitables[child.process.sentinel] = (child, "exit")
            waitables[child.heartbeat] = (child, "heartbeat")
        ready = multiprocessing.connection.wait(list(waitables), timeout=self._watch_timeout(running))
        for handle in ready:
            child, kind = waitables[handle]
            if kind == "heartbeat":
                self._read_heartbeats(child)  # type: ignore[arg-type]
            elif kind == "wakeup":
                self.wakeup.drain()
        for handle in ready:
            child, kind = waitables[handle]
            if kind == "exit":
                self._exited(child)  # type: ignore[arg-type]
        self._check_hangs()

    @staticmethod
    def _watch_timeout(running: list[Child]) -> float:
        """Seconds until the first hang deadline of a running child, at most WATCH_MAX_SECONDS."""
        now = time.monotonic()
        deadlines = [child.progress_at + child.hang_timeout - now for child in running if not child.hang_killed]
        return max(0.01, min([WATCH_MAX_SECONDS, *deadlines]) + 0.01)

    def _read_heartbeats(self, child: Child) -> None:
        assert child.heartbeat is not None
        try:
            readable = True  # the wait found it readable: one poll fewer (a select of its own) per heartbeat
            while readable or child.heartbeat.poll():
                readable = False
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
                    self.policy.max_restarts_window and child.alive:
                child.attempt = 0  # healthy for a whole window: the next failure starts the backoff over
                child.failed_retries = 0

    def child_exited(self, child: Child) -> None:
        """Called when a child's exit is noticed, before it is restarted (its last heartbeat still there)."""

    def _exited(self, child: Child) -> None:
        assert child.process is not None
        child.exit_pending = False
        child.process.join(0)
        self._note_pids()
        self.child_exited(child)
        reason = describe_exit(child.process.exitcode)
        if child.hang_killed:
            reason = f"hung, {reason}"
        if child.heartbeat is not None:
            child.heartbeat.close()
        seen_at = time.monotonic()
        if self._stop_under_way(child.process.exitcode):
            log.info("%s exited (%s) while stopping", child.name, reason)
            return
        supervisor = self.policy
        now = time.monotonic()
        while child.restart_times and now - child.restart_times[0] > supervisor.max_restarts_window:
            child.restart_times.popleft()
        if len(child.restart_times) >= supervisor.max_restarts:
            child.failed = True
            cooldown = min(FAILED_RETRY_MAX, supervisor.failed_retry * 2 ** child.failed_retries)
            child.failed_retries += 1
            log.error("%s failed: %d restarts within %.0f s (supervisor.max_restarts); last exit: %s; "
                      "%s keep running; trying it again in %.0f s (supervisor.failed_retry)",
                      child.name, len(child.restart_times), supervisor.max_restarts_window, reason, self.others,
                      cooldown)
            self._after(cooldown, RetryFailed(child.name))
            return
        child.restart_times.append(now)
        child.attempt += 1
        child.restarts += 1
        delay = min(supervisor.backoff_max, supervisor.backoff_initial * 2 ** (child.attempt - 1))
        log.warning("%s exited (%s); restart attempt %d in %.1f s", child.name, reason, child.attempt, delay)
        self._after(max(0.0, delay - (now - seen_at)), Restart(child.name))  # the grace counts as backoff

    def _stop_under_way(self, exitcode: int | None = None) -> bool:
        """Whether the agent is stopping; after a clean stop of a child, whether it starts to within the grace."""
        if self.stopping or self.stop_requested.is_set():
            return True
        return exitcode in CLEAN_STOPS and self.stop_requested.wait(STOP_SIGNAL_GRACE_SECONDS)

    def _after(self, delay: float, message: Any) -> None:
        """Send `message` to this actor after `delay` seconds (cancelled by a shutdown)."""
        timer = threading.Timer(delay, self._tell_now, (message,))
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def _tell_now(self, message: Any) -> None:
        self.actor_ref.tell(message)
        self.wakeup.ring()

    # --- stopping --------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop every child at once (SIGTERM, then SIGKILL after `stop_seconds`)."""
        self._cancel_timers()
        self._stop_all([child for child in self.children.values() if child.alive], self.stop_seconds)
        log.info("all processes stopped")

    def _cancel_timers(self) -> None:
        self.stopping = True
        for timer in self._timers:
            timer.cancel()

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


class StopSignals:
    """SIGTERM/SIGINT for a supervising process: the first sets `requested` (a graceful stop); the same signal
    again within DUPLICATE_SIGNAL_SECONDS counts once; any later one SIGKILLs the known children and exits at
    once. `known_pids` is kept up to date by the caller."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.known_pids: list[int] = []
        self._first: list[tuple[int, float]] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._first:
            first_signum, first_at = self._first[0]
            if signum == first_signum and time.monotonic() - first_at < DUPLICATE_SIGNAL_SECONDS:
                return  # the same request delivered twice (to the process and to its group)
            for pid in self.known_pids:  # a second signal: leave at once
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone
            os._exit(128 + signum)
        self._first.append((signum, time.monotonic()))
        log.info("received %s; stopping (send it again to exit at once)", signal.Signals(signum).name)
        self.requested.set()
