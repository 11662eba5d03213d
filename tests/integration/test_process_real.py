"""The process dataset against the real /proc and the kernel's process connector, with processes these tests spawn."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from actors.datasets import DatasetContext
from actors.datasets.process import capture, dataset as process_dataset
from actors.datasets.process.dataset import ERROR, STARTED, STOPPED, ProcessDataset
from actors.ecs import assert_ecs
from tests.sample_support import EVENT_FIELDS
from actors.event import Event
from actors.datasets.process.proc_connector import ProcConnector, ProcessExec, ProcessExit
from tests.agent_harness import wait_for

REPO = Path(__file__).resolve().parents[2]
HOST_ID = "0123456789abcdef0123456789abcdef"
SLEEP = os.path.realpath("/bin/sleep")
TRUE = os.path.realpath("/bin/true")
STORM_SIZE = 2000
PF_KTHREAD = 0x00200000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads every process and subscribes to the connector: root")


def dataset(backend: str = "procfs", **options: Any) -> ProcessDataset:
    return process_dataset.create(DatasetContext(hostfs=Path("/"), options={"backend": backend, **options},
                                                 host_id=HOST_ID))



def read_until(stream: ProcConnector, done: Callable[[list[Any]], bool], timeout: float, what: str) -> list[Any]:
    """Read the stream until `done(items)` holds; fail after `timeout` seconds."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while not done(items):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} ({len(items)} items read)")
        items += stream.read(0.1)
    return items


def about(events: list[Event], pid: int) -> list[Event]:
    return [event for event in events if event.fields["process"]["pid"] == pid]


def valid(event: Event) -> dict[str, Any]:
    document = event.stamped(1).to_document({})
    assert_ecs(document, EVENT_FIELDS)
    return document


def sha1(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes that are killed and reaped when the test ends, whatever happens."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        process = subprocess.Popen(argv, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture
def connector_dataset() -> Iterator[tuple[ProcessDataset, ProcConnector]]:
    ds = dataset("netlink")
    stream = ds.open_stream()
    assert stream is not None
    yield ds, stream
    stream.close()


def run_snippet(prefix: list[str], code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run Python `code` in the repository (under `prefix`, e.g. setpriv) and return its output."""
    return subprocess.run([*prefix, sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


# --------------------------------------------------------------------------------------------------------
# Polling /proc
# --------------------------------------------------------------------------------------------------------

def test_a_spawned_process_appears_with_its_fields_and_its_exit_is_a_stop(spawn, tmp_path: Path) -> None:
    marker = f"hostaudit-test-{uuid.uuid4().hex[:12]}"
    ds = dataset()
    before = ds.observe()
    child = spawn([marker, "600"], executable="/bin/sleep", cwd=tmp_path, user=65534, group=65534, extra_groups=[])
    spawned_at = time.time()
    current = wait_for(lambda: (snapshot := ds.observe())["processes"].get(str(child.pid)) and snapshot, 5,
                       "the child in a scan")
    [started] = about(list(ds.diff(before, current, at_startup=False)), child.pid)
    document = valid(started)
    process = document["process"]
    assert started.action == STARTED
    assert process["args"] == [marker, "600"] and process["name"] == "sleep"
    assert process["executable"] == SLEEP and process["working_directory"] == str(tmp_path)
    assert process["parent"] == {"pid": os.getpid()}
    assert process["hash"] == {"sha1": sha1(SLEEP)}
    start = datetime.fromisoformat(process["start"].replace("Z", "+00:00")).timestamp()
    assert spawned_at - 2 <= start <= spawned_at + 1  # btime is whole seconds, as go-sysinfo reads it
    assert document["user"]["id"] == "65534" and document["user"]["name"] == "nobody"
    assert document["user"]["group"]["id"] == "65534"
    assert process["entity_id"] == process_dataset.process_entity_id(HOST_ID, child.pid, current["processes"][
        str(child.pid)]["ticks"])
    assert started.message == f"Process sleep (PID: {child.pid}) by user nobody STARTED"

    child.kill()
    child.wait(timeout=10)
    [stopped] = about(list(ds.diff(current, ds.observe(), at_startup=False)), child.pid)
    assert stopped.action == STOPPED and valid(stopped)["process"]["args"] == [marker, "600"]


def test_real_effective_and_saved_ids_of_a_real_process_go_to_their_fields(spawn) -> None:
    """A process whose real, effective and saved ids all differ (setresuid/setresgid): Auditbeat's user.* and
    user.effective.*, and ECS's process.user / process.group (effective) and process.saved_user / saved_group."""
    ds = dataset()
    before = ds.observe()
    child = spawn([sys.executable, "-c", "import os, sys; os.setgroups([]); os.setresgid(100, 200, 300); "
                   "os.setresuid(1000, 2000, 0); print('ready', flush=True); sys.stdin.readline()"],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    current = ds.observe()
    [started] = about(list(ds.diff(before, current, at_startup=False)), child.pid)
    document = valid(started)
    process = document["process"]

    assert document["user"]["id"] == "1000" and document["user"]["group"]["id"] == "100"
    assert document["user"]["effective"] == {"id": "2000", "group": {"id": "200"}}
    assert (process["user"], process["group"]) == ({"id": "2000"}, {"id": "200"})
    assert (process["saved_user"], process["saved_group"]) == ({"id": "0"}, {"id": "300"})
    assert "process" not in document.get("system", {}).get("audit", {})


def test_quickly_exiting_processes_never_break_a_scan(spawn) -> None:
    ds = dataset()
    loop = spawn(["bash", "-c", "for i in $(seq 400); do /bin/true; done"])
    previous = ds.observe()
    scans = 0
    while loop.poll() is None or scans < 3:
        current = ds.observe()
        events = ds.diff(previous, current, at_startup=False)
        assert not [event for event in events if event.action == ERROR], [event.message for event in events]
        for event in events:
            valid(event)
        previous, scans = current, scans + 1
    assert scans >= 3


def test_kernel_threads_are_left_out_of_a_real_scan() -> None:
    kernel_threads = set()
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes() if entry.isdigit() else b""
        except FileNotFoundError:
            continue
        if stat and int(stat[stat.rfind(b")") + 2:].split()[6]) & PF_KTHREAD:
            kernel_threads.add(entry)
    assert "2" in kernel_threads and len(kernel_threads) > 1  # kthreadd and its children
    processes = dataset().observe()["processes"]
    assert not kernel_threads & set(processes)
    assert str(os.getpid()) in processes


def test_an_executable_in_another_mount_namespace_is_hashed(spawn, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    hidden = tmp_path / "ns"
    hidden.mkdir()
    script = f"mount -t tmpfs none {hidden} && cp /bin/sleep {hidden}/hidden-sleep && exec {hidden}/hidden-sleep 600"
    child = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        wait_for(lambda: os.readlink(f"/proc/{child.pid}/exe") == f"{hidden}/hidden-sleep", 5, "the hidden exec")
    except (AssertionError, FileNotFoundError):
        pytest.skip("cannot create a mount namespace here")
    assert not (hidden / "hidden-sleep").exists()  # not visible from this mount namespace
    record = dataset().observe()["processes"][str(child.pid)]
    assert record["exe"] == f"{hidden}/hidden-sleep" and record["hash"] == {"sha1": sha1(SLEEP)}


def test_a_process_we_may_not_inspect_is_reported_without_exe_and_cwd(spawn, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1)")
    child = spawn(["sleep", "600"], user=65534, group=65534, extra_groups=[], cwd=tmp_path)
    wait_for(lambda: os.readlink(f"/proc/{child.pid}/exe") == SLEEP, 5, "the exec")
    code = (f"import json; from actors.datasets.process.dataset import create; from actors.datasets import DatasetContext;"
            f"from pathlib import Path; ds = create(DatasetContext(hostfs=Path('/'), options={{'backend': 'procfs'}}));"
            f"print(json.dumps(ds.observe()['processes'].get('{child.pid}')))")
    # Root without CAP_SYS_PTRACE may not follow another user's /proc/PID/exe and cwd links.
    result = run_snippet(["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-all"], code)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record is not None and "exe" not in record and "cwd" not in record and "error" not in record
    assert record["args"] == ["sleep", "600"] and record["uid"] == "65534" and record["name"] == "sleep"


# --------------------------------------------------------------------------------------------------------
# The process connector
# --------------------------------------------------------------------------------------------------------

def test_the_stream_reports_a_storm_of_execs_that_polling_mostly_misses(spawn, connector_dataset) -> None:
    ds, stream = connector_dataset
    poller = dataset("procfs")
    committed, poll_previous = ds.observe(), poller.observe()
    marker = f"storm-{uuid.uuid4().hex[:8]}"
    items: list[Any] = []
    stop_reading = threading.Event()

    def read() -> None:
        while not stop_reading.is_set():
            items.extend(stream.read(0.1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    loop = spawn(["bash", "-c", f"for i in $(seq {STORM_SIZE}); do /bin/true {marker}; done"])
    poll_events: list[Event] = []
    next_poll = time.monotonic() + 1.0
    deadline = time.monotonic() + 60
    try:
        while loop.poll() is None or len(children_exits(items, loop.pid)) < STORM_SIZE - stream.lost():
            assert time.monotonic() < deadline, f"{len(children_exits(items, loop.pid))} exits read"
            if time.monotonic() >= next_poll:  # procfs at a 1 s period during the same storm
                poll_current = poller.observe()
                poll_events += poller.diff(poll_previous, poll_current, at_startup=False)
                poll_previous, next_poll = poll_current, next_poll + 1.0
            time.sleep(0.01)
    finally:
        stop_reading.set()
        reader.join(timeout=5)
    poll_events += poller.diff(poll_previous, poller.observe(), at_startup=False)

    committed, events = ds.apply_stream(committed, items)
    started = [event for event in events if event.action == STARTED and parent(event) == loop.pid]
    stopped = [event for event in events if event.action == STOPPED and parent(event) == loop.pid]
    lost = stream.lost()
    assert len(started) >= STORM_SIZE - lost and len(stopped) >= STORM_SIZE - lost
    assert {pid_of(event) for event in started} == {pid_of(event) for event in stopped}
    assert all(valid(event)["process"]["exit_code"] == 0 and event.fields["event"]["duration"] >= 0
               for event in stopped)
    with_exe = [event for event in started if event.fields["process"].get("executable") == TRUE]
    with_args = [event for event in started if event.fields["process"].get("args") == ["/bin/true", marker]]
    seen_by_poll = [event for event in poll_events
                    if event.action == STARTED and marker in event.fields["process"].get("args", [])]
    print(f"\nstorm of {STORM_SIZE} execs: stream reported {len(started)} started / {len(stopped)} stopped "
          f"(lost {lost}), {len(with_exe)} with executable, {len(with_args)} with args; "
          f"procfs at 1 s saw {len(seen_by_poll)} ({100 * len(seen_by_poll) / STORM_SIZE:.1f}%)")
    for event in started[:50]:
        valid(event)
    # The executable of every one, from /proc or, for one gone before it was read, from its exec's opens
    # (fanotify); the arguments only from /proc (measured: 90-100%).
    assert len(with_exe) >= STORM_SIZE - lost and len(with_args) >= STORM_SIZE // 4
    assert len(seen_by_poll) <= STORM_SIZE // 20  # polling misses nearly all of them


def children_exits(items: list[Any], parent_pid: int) -> list[ProcessExit]:
    return [item for item in items if isinstance(item, ProcessExit) and item.ppid == parent_pid]


def parent(event: Event) -> int | None:
    return event.fields["process"].get("parent", {}).get("pid")


def pid_of(event: Event) -> int:
    return event.fields["process"]["pid"]


def test_stream_and_poll_report_each_process_once(spawn, connector_dataset) -> None:
    ds, stream = connector_dataset
    committed = ds.observe()
    marker = f"once-{uuid.uuid4().hex[:8]}"
    child = spawn([marker, "600"], executable="/bin/sleep")
    items = read_until(stream, lambda got: any(isinstance(item, ProcessExec) and item.pid == child.pid
                                               for item in got), 10, "the exec")
    committed, events = ds.apply_stream(committed, items)
    [started] = about(list(events), child.pid)
    assert started.action == STARTED and valid(started)["process"]["args"] == [marker, "600"]
    assert started.fields["process"]["executable"] == SLEEP and started.fields["process"]["hash"]["sha1"]
    current = ds.observe()
    assert about(list(ds.diff(committed, current, at_startup=False)), child.pid) == []
    committed = current

    child.kill()
    child.wait(timeout=10)
    items = read_until(stream, lambda got: any(isinstance(item, ProcessExit) and item.pid == child.pid
                                               for item in got), 10, "the exit")
    committed, events = ds.apply_stream(committed, items)
    [stopped] = about(list(events), child.pid)
    document = valid(stopped)
    assert stopped.action == STOPPED and document["process"]["exit_code"] == -9
    assert document["event"]["duration"] > 0 and document["process"]["end"] >= document["process"]["start"]
    assert about(list(ds.diff(committed, ds.observe(), at_startup=False)), child.pid) == []


FORKER = """
import os, sys, time
child = os.fork()
if child == 0:
    time.sleep(float(sys.argv[1]))
    os._exit(7)
print(child, flush=True)
os.waitpid(child, 0)
"""


def test_a_fork_without_exec_is_reported_only_if_a_poll_sees_it(spawn, connector_dataset) -> None:
    ds, stream = connector_dataset
    committed = ds.observe()
    quick = spawn([sys.executable, "-c", FORKER, "0.05"], stdout=subprocess.PIPE, text=True)
    quick_child = int(quick.stdout.readline())
    items = read_until(stream, lambda got: any(isinstance(item, ProcessExit) and item.pid == quick_child
                                               for item in got), 10, "the quick child's exit")
    assert not any(isinstance(item, ProcessExec) and item.pid == quick_child for item in items)
    committed, events = ds.apply_stream(committed, items)
    assert about(list(events), quick_child) == []  # neither exec'd nor alive at a poll: as procfs alone

    slow = spawn([sys.executable, "-c", FORKER, "3"], stdout=subprocess.PIPE, text=True)
    slow_child = int(slow.stdout.readline())
    committed, _ = ds.apply_stream(committed, stream.read(0.2))
    current = ds.observe()
    [started] = about(list(ds.diff(committed, current, at_startup=False)), slow_child)
    assert started.action == STARTED and started.fields["process"]["parent"]["pid"] == slow.pid
    committed = current
    items = read_until(stream, lambda got: any(isinstance(item, ProcessExit) and item.pid == slow_child
                                               for item in got), 10, "the slow child's exit")
    _, events = ds.apply_stream(committed, items)
    [stopped] = about(list(events), slow_child)
    assert stopped.action == STOPPED and valid(stopped)["process"]["exit_code"] == 7


def test_the_reader_process_batches_its_items_itself_and_a_reader_thread_leaves_it_to_the_runtime(
        connector_dataset) -> None:
    _, stream = connector_dataset
    assert stream.batch_seconds == 0.0  # the runtime applies each frame at once: the reader's hold is the one wait
    threaded = ProcConnector("/proc/", lambda reads: None, reader="thread").open()
    try:
        assert threaded.batch_seconds is None  # what each read got: the runtime gathers its default window
    finally:
        threaded.close()


def test_finish_hands_out_what_the_reader_process_held_and_the_reader_exits_by_itself(spawn) -> None:
    connector = dataset("netlink").open_stream()
    assert connector is not None
    try:
        reader_pid = connector._child
        child = spawn([TRUE, "held"])
        child.wait(10)  # exec'd and exited: the reader holds both for up to FRAME_HOLD_STEADY before sending them
        connector.finish(timeout=5)
        items = connector.read(0.0)
        assert [type(item) for item in items if item.pid == child.pid] == [ProcessExec, ProcessExit]
        # It sent its last frame and exited on its own (a zombie until close() reaps it), before any SIGKILL.
        wait_for(lambda: Path(f"/proc/{reader_pid}/stat").read_text().split(") ")[1][0] == "Z", 5,
                 "the reader process to exit")
        assert connector.read(0.0) == []
    finally:
        connector.close()


def test_the_kernels_last_pid_moves_with_every_new_process(spawn, connector_dataset) -> None:
    ds, _ = connector_dataset
    before = ds._last_pid()
    child = spawn(["true"])
    child.wait(10)
    after = ds._last_pid()
    assert isinstance(before, int) and isinstance(after, int) and after != before
    assert after >= child.pid or after < before, "the last pid handed out (or the pids wrapped past it)"


def test_a_poll_lists_proc_only_when_a_pid_was_handed_out_since_the_last(connector_dataset, monkeypatch) -> None:
    ds, _ = connector_dataset
    ds.observe()  # the first poll: a full pass, the next one is due in FULL_PASS_SECONDS
    last_pids = iter([100, 100, 101])  # as /proc/loadavg would show them
    monkeypatch.setattr(ds, "_last_pid", lambda: next(last_pids))
    listed: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(process_dataset.os, "listdir", lambda path: listed.append(path) or real_listdir(path))
    first = ds.observe()
    second = ds.observe()  # no pid handed out since: nothing new can be in /proc
    assert len(listed) == 1 and second["processes"] == first["processes"]
    ds.observe()
    assert len(listed) == 2, "a pid was handed out: /proc is listed again"


def test_procfs_backend_opens_no_stream(caplog: pytest.LogCaptureFixture) -> None:
    assert dataset("procfs").open_stream() is None
    assert caplog.records == []


FALLBACK = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
from pathlib import Path
from actors.datasets import DatasetContext
from actors.datasets.process.dataset import create
from actors.datasets.process.proc_connector import ConnectorUnavailable
print("auto:", create(DatasetContext(hostfs=Path("/"), options={"backend": "auto"})).open_stream())
try:
    create(DatasetContext(hostfs=Path("/"), options={"backend": "netlink"})).open_stream()
except ConnectorUnavailable as error:
    print("netlink:", error)
"""


@pytest.mark.parametrize("prefix, reason", [
    (["setpriv", "--bounding-set=-net_admin", "--inh-caps=-all"], "CAP_NET_ADMIN"),
    (["unshare", "--pid", "--fork"], "initial PID"),
])
def test_without_the_connector_auto_polls_with_one_warning_and_netlink_fails(prefix: list[str], reason: str) -> None:
    if shutil.which(prefix[0]) is None:
        pytest.skip(f"needs {prefix[0]}(1)")
    result = run_snippet(prefix, FALLBACK)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert "auto: None" in lines
    assert len(warnings) == 1 and reason in warnings[0] and "polling /proc" in warnings[0]
    [netlink] = [line for line in lines if line.startswith("netlink:")]
    assert "process.backend is netlink" in netlink and reason in netlink


@pytest.mark.parametrize("native", [True, False], ids=["C capture", "Python capture"])
def test_execs_read_behind_a_backlog_still_follow_their_forks(spawn, native: bool, monkeypatch) -> None:
    """A reader that falls behind (here: stopped during a storm) finds more on the main socket than one drain
    takes. The EXECs newer than what it drained wait for their FORKs, over as many passes as it takes, so
    every exec, even of a process long gone, has its parent and its fork time. The same with the reader's
    wake-ups in Python (a host where the C capture could not be built)."""
    if not native:
        monkeypatch.setattr(capture, "_capture_wake_native", None)
        monkeypatch.setattr(capture, "_gather_native", None)
    elif not capture.NATIVE:
        pytest.skip("the C capture is not built")
    connector = dataset("netlink").open_stream()
    assert connector is not None
    try:
        reader_pid = connector._child

        device = os.stat(TRUE).st_dev
        mark = f"fanotify sdev:{os.major(device) << 20 | os.minor(device):x} "  # the kernel's dev_t, in hex

        def listening() -> bool:  # the reader process has marked the filesystem of /bin/true for exec opens
            for fd in Path(f"/proc/{reader_pid}/fdinfo").iterdir():
                try:
                    if mark in fd.read_text(errors="replace"):
                        return True
                except FileNotFoundError:  # closed meanwhile (the reader closes what it inherited)
                    pass
            return False

        wait_for(listening, 10, "the reader to listen to exec opens")
        runs = 1500  # 4,500 messages: several drains of the main socket, far below its receive buffer
        os.kill(reader_pid, signal.SIGSTOP)
        try:
            loop = subprocess.run(["bash", "-c", f"for i in $(seq {runs}); do /bin/true; done; echo $$"],
                                  capture_output=True, text=True, timeout=120, check=True)
        finally:
            os.kill(reader_pid, signal.SIGCONT)
        shell = int(loop.stdout.strip())
        try:  # every one: 4,500 messages fit the receive buffers many times over
            items = read_until(connector, lambda items: len(children_exits(items, shell)) >= runs, 60,
                               f"the exits of {runs} children")
        except AssertionError as error:
            raise AssertionError(f"{error}; notifications counted as lost: {connector.lost()}") from None
        exits = {item.pid for item in children_exits(items, shell)}
        execs = [item for item in items if isinstance(item, ProcessExec) and item.pid in exits]
        assert len(execs) >= runs, f"{len(execs)} execs for {len(exits)} exits (lost {connector.lost()})"
        print(f"{len(execs)} execs read behind a backlog; notifications counted as lost: {connector.lost()}")
        orphans = [item for item in execs if item.ppid != shell or item.fork_boot_ns is None]
        assert not orphans, f"{len(orphans)} of {len(execs)} execs read before their fork, e.g. {orphans[:3]}"
        nameless = [item for item in execs if item.exec_file is None and not getattr(item.details, "exe", None)]
        assert not nameless, f"{len(nameless)} of {len(execs)} execs without executable, e.g. {nameless[:3]}"
    finally:
        connector.close()
