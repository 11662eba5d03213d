"""The root supervisor actor: starts one OS process per dataset plus the producer, watches, restarts.

The command line plans the children with the validated settings (`plan`), then replaces itself, same pid, with a
fresh interpreter that runs the plan (`exec_supervisor`, `main`): the supervisor that runs for months holds neither
dynaconf nor the configuration schema. It imports the children's modules itself before it forks the forkserver
(`actors.runtime.sharing`), so one copy of their pages serves every process."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from actors.runtime.logs import configure_logging
from actors.runtime.monitoring import build_stats, log_stats, serve
from actors.runtime.worker import run_pickled, set_role
from actors.runtime.forkserver import fork_forkserver, forkserver_context
from actors.runtime.sharing import freeze_for_fork, import_shared_modules
from actors.runtime.supervision import (Child, ProcessSupervisor, RestartSettings, Shutdown, Status, StopSignals,
                                        Wakeup)

if TYPE_CHECKING:
    from actors.config import Settings
    from actors.runtime.agent import AgentIdentity

log = logging.getLogger("hostaudit.supervisor")

PRODUCER = "producer"
PRODUCER_HANG_TIMEOUT = 120.0
COLLECTOR_STOP_SECONDS = 3.0
PRODUCER_STOP_SECONDS = 6.0
STATS_LOG_INTERVAL = 30.0


@dataclass(frozen=True)
class ChildPlan:
    """One child to run: its name, its spec as `run_pickled` reads it, and its hang timeout (seconds)."""

    name: str
    spec: tuple[str, bytes]
    hang_timeout: float


@dataclass(frozen=True)
class Plan:
    """Everything the supervisor runs on, in types of its own: no configuration object crosses the exec."""

    children: tuple[ChildPlan, ...]  # the producer first
    restarts: RestartSettings
    path_data: Path
    log_level: str
    http_enabled: bool
    http_host: str
    http_port: int
    lock_fd: int  # the held lock of path.data (actors.runtime.data_lock), kept open across the exec


def plan(settings: Settings, agent: AgentIdentity, lock_fd: int) -> Plan:
    """The children of `settings`: the producer, and a collector per enabled dataset."""
    from actors.datasets import CATALOG, checked_options
    from actors.options import validate
    from actors.outputs.routing import routing_fields
    from actors.runtime.doorbell import doorbell_name
    from actors.runtime.worker import CollectorSpec, ProducerSpec

    doorbell = doorbell_name(settings.path_data)
    producer_hang_timeout = settings.supervisor.hang_timeout or PRODUCER_HANG_TIMEOUT
    producer = ProducerSpec(settings.path_data, settings.output.type, dict(settings.output.options),
                            settings.logging_level, doorbell, hang_timeout=producer_hang_timeout)
    children = [ChildPlan(PRODUCER, ("producer", pickle.dumps(producer)), producer_hang_timeout)]
    routing = routing_fields(settings.output.type, settings.output.options)  # once, for every collector
    for name, dataset in settings.datasets.items():
        spec = CollectorSpec(
            dataset=name, period=dataset.period, state_period=dataset.state_period,
            # Checked here into plain attributes: the collector needs no pydantic (actors.datasets.CheckedOptions).
            options=checked_options(validate(CATALOG.options_schema(name), dataset.options, name)),
            hostfs=settings.hostfs, path_data=settings.path_data,
            agent=agent, spool_max_bytes=settings.queue_disk_max_size,
            hang_file=settings.debug_hang_file, log_level=settings.logging_level, doorbell=doorbell,
            routing_fields=routing, hang_timeout=settings.hang_timeout_for(name),
        )
        children.append(ChildPlan(name, ("collector", pickle.dumps(spec)), spec.hang_timeout))
    policy = settings.supervisor
    restarts = RestartSettings(policy.max_restarts, policy.max_restarts_window, policy.backoff_initial,
                               policy.backoff_max, policy.failed_retry)
    return Plan(tuple(children), restarts, settings.path_data, settings.logging_level, settings.http_enabled,
                settings.http_host, settings.http_port, lock_fd)


def exec_supervisor(plan: Plan) -> NoReturn:
    """Replace this process (same pid, same standard streams, same interpreter flags and import path) with a new
    interpreter that runs `plan`, handed over in an anonymous memory file."""
    import subprocess

    fd = os.memfd_create("hostaudit-plan", 0)  # no MFD_CLOEXEC: the new program reads it
    with open(fd, "wb", closefd=False) as file:
        file.write(pickle.dumps(plan))
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(plan.lock_fd, True)
    code = (f"import sys; sys.path[:] = {sys.path!r}; from actors.runtime.supervisor import main; "
            f"sys.exit(main({fd}))")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", code])


def main(plan_fd: int) -> int:
    """The supervisor's program after the exec: read the plan, then run it."""
    with open(plan_fd, "rb") as file:
        plan = pickle.load(file)
    os.set_inheritable(plan.lock_fd, False)  # held here only, not by the forkserver nor its children
    set_role("supervisor")
    configure_logging(plan.log_level, "supervisor")
    return run(plan)


class SupervisorActor(ProcessSupervisor):
    """The agent's root actor: one process per dataset's collector, and the producer (stopped last, so it
    flushes what the collectors spooled)."""

    others = "the other datasets"

    def __init__(self, plan: Plan, context: BaseContext, stop_requested: threading.Event | None = None,
                 known_pids: list[int] | None = None, wakeup: Wakeup | None = None) -> None:
        super().__init__(plan.restarts, context, stop_requested, known_pids, wakeup)
        for child in plan.children:
            self.children[child.name] = Child(child.name, run_pickled, child.spec, child.hang_timeout)

    # --- stopping --------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self._cancel_timers()
        collectors = [c for c in self.children.values() if c.name != PRODUCER and c.alive]
        self._stop_all(collectors, COLLECTOR_STOP_SECONDS)
        producer = self.children[PRODUCER]
        if producer.alive:
            self._stop_all([producer], PRODUCER_STOP_SECONDS)
        log.info("all processes stopped")


def run(plan: Plan) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT; return the exit code.

    Whatever happens here, the children are stopped before this returns: no collector is left running
    without its supervisor (a failed HTTP bind exits 1 with one line, after stopping them).
    """
    context = forkserver_context("actors.runtime.preload")
    # The children's modules, loaded here rather than in the forkserver: importing after the fork would copy most
    # of the pages the two processes shared (9 MiB of the supervisor's own before; 4.5 after).
    import_shared_modules()
    freeze_for_fork()
    fork_forkserver()  # before any thread, and before the signal handlers: it inherits neither
    signals = StopSignals()
    stop_requested = signals.requested
    wakeup = Wakeup()
    supervisor = SupervisorActor.start(plan, context, stop_requested, signals.known_pids, wakeup)
    server = None
    try:
        def current_stats() -> dict[str, Any]:
            return build_stats(wakeup.ask(supervisor, Status(), timeout=5), plan.path_data / "spool")

        if plan.http_enabled:
            try:
                server = serve(plan.http_host, plan.http_port, current_stats)
            except OSError as error:
                log.error("http: cannot serve %s:%d (%s); stopping", plan.http_host, plan.http_port,
                          error.strerror or error)
                return 1
        while not stop_requested.wait(STATS_LOG_INTERVAL):  # the signal handler sets it: no polling
            log_stats(current_stats())
        return 0
    finally:
        if server is not None:
            server.shutdown()
        try:
            wakeup.ask(supervisor, Shutdown(), timeout=15)
        finally:
            supervisor.stop()
