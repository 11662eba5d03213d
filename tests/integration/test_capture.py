"""The reader's wake-up (capture.py) in C and in Python give the same: on the real kernel's messages, on the real
/proc of processes these tests start, and on synthetic trees with files that cannot be read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from actors.datasets.process import capture
from actors.datasets.process.capture import (CN_IDX_PROC, NETLINK_CONNECTOR, PROC_EVENT_EXEC, RECORD, ExecReads,
                                             capture_wake)
from actors.datasets.process.proc_connector import (PROC_CN_MCAST_IGNORE, PROC_CN_MCAST_LISTEN, attach_filter,
                                                    exec_filter, subscribe_message)
from tests.agent_harness import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="subscribes to the process connector: root")
native = pytest.importorskip("actors.datasets.process._capture_native", reason="the C capture is not built")


def test_the_install_builds_the_c_capture_and_the_reader_uses_it() -> None:
    assert capture.NATIVE and capture._capture_wake_native is native.capture_wake


def c_reads(proc: str, pids: list[int]) -> list[ExecReads]:
    return native.read_execs(os.fsencode(proc), pids, ExecReads)


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Processes that hold still while they are read: a plain one, one with 20,000 bytes of arguments (more than
    one read), one in a directory of its own, and a zombie."""
    hold = [sys.executable, "-c", "import time; time.sleep(300)"]
    started = [subprocess.Popen(hold), subprocess.Popen([*hold, *(["x" * 99] * 200)]),
               subprocess.Popen([*hold, "in-a-dir"], cwd=tmp_path), subprocess.Popen(["true"])]
    wait_for(lambda: Path(f"/proc/{started[-1].pid}/stat").read_text().split(") ")[1][0] == "Z", 10,
             "the zombie")
    wait_for(lambda: all(b"time.sleep" in Path(f"/proc/{child.pid}/cmdline").read_bytes() and
                         Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "S"
                         for child in started[:3]), 10, "the sleepers to sleep")
    yield started
    for child in started:
        child.kill()
        child.wait(10)


def test_c_and_python_read_the_same_files_of_real_processes(sleepers: list[subprocess.Popen]) -> None:
    pids = [child.pid for child in sleepers] + [os.getpid(), 1, 4_000_000]  # ourselves, init, no such pid
    in_c, in_python = c_reads("/proc/", pids), capture.read_execs("/proc/", pids)
    assert in_c[:4] == in_python[:4]  # the still ones, every field
    for c_row, python_row in zip(in_c[4:], in_python[4:]):  # the live ones: their status and stat move
        assert (c_row.pid, c_row.exe, c_row.cmdline, c_row.cwd, c_row.exe_id, c_row.cgroup) == \
               (python_row.pid, python_row.exe, python_row.cmdline, python_row.cwd, python_row.exe_id,
                python_row.cgroup)
    long_args = in_c[1]
    assert isinstance(long_args.cmdline, bytes) and len(long_args.cmdline) > 20_000
    assert in_c[2].cwd == os.readlink(f"/proc/{sleepers[2].pid}/cwd")
    zombie = in_c[3]
    assert zombie.exe is None and zombie.cmdline == b"" and isinstance(zombie.stat, bytes)
    assert in_c[-1] == ExecReads(4_000_000, None, None, None, None, None, None, None)


def test_c_and_python_read_synthetic_trees_alike(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    whole = proc / "100"  # every file there, cgroup over several reads
    whole.mkdir(parents=True)
    (whole / "exe").symlink_to("/usr/bin/true")
    (whole / "cmdline").write_bytes(b"true\0-a\0")
    (whole / "stat").write_bytes(b"100 (true) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n")
    (whole / "status").write_bytes(b"Name:\ttrue\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    (whole / "cwd").symlink_to(tmp_path)
    (whole / "cgroup").write_bytes(b"0::/" + b"c" * 100_000 + b"\n")
    odd = proc / "101"  # an exe that is no link (EINVAL), a cmdline that is a directory (EISDIR), no status
    odd.mkdir()
    (odd / "exe").write_bytes(b"not a link")
    (odd / "cmdline").mkdir()
    (odd / "stat").write_bytes(b"101 (odd) S 1 101 101 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n")
    (odd / "cwd").symlink_to(tmp_path / "gone")
    no_stat = proc / "102"  # a stat that is a directory: nothing after it is read
    no_stat.mkdir()
    (no_stat / "stat").mkdir()
    (no_stat / "cmdline").write_bytes(b"")
    dangling = proc / "103"  # an exe link to nothing: a path, and no identity
    dangling.mkdir()
    (dangling / "exe").symlink_to(tmp_path / "deleted")
    (dangling / "stat").write_bytes(b"103 (x) S 1 103 103 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n")
    pids = [100, 101, 102, 103, 104]
    in_c = c_reads(f"{proc}/", pids)
    assert in_c == capture.read_execs(f"{proc}/", pids)
    assert in_c[0].exe_id is not None and len(in_c[0].cgroup) > 100_000
    assert (in_c[1].exe, in_c[1].cmdline, in_c[1].status) == (22, 21, None)  # EINVAL, EISDIR, absent
    assert in_c[2].stat == 21 and in_c[2].status is None and in_c[2].cgroup is None
    assert in_c[3].exe == str(tmp_path / "deleted") and in_c[3].exe_id is None


def subscribed(split: bool) -> tuple[socket.socket, socket.socket | None]:
    """A subscribed connector socket, and with `split` a second one that takes its EXECs (as the reader's)."""
    main = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    main.bind((0, CN_IDX_PROC))
    main.setblocking(False)
    main.sendto(subscribe_message(main.getsockname()[0], PROC_CN_MCAST_LISTEN), (0, 0))
    if not split:
        return main, None
    execs = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    attach_filter(execs, exec_filter(execs=True))
    execs.bind((0, CN_IDX_PROC))
    execs.setblocking(False)
    attach_filter(main, exec_filter(execs=False))
    return main, execs


def unsubscribe(*sockets: socket.socket | None) -> None:
    for sock in sockets:
        if sock is not None:
            sock.sendto(subscribe_message(sock.getsockname()[0], PROC_CN_MCAST_IGNORE), (0, 0))
            sock.close()


def process_events(wake: capture.Wake) -> list[tuple]:
    """A wake-up's records but the subscriptions' acknowledgements (every listener gets every socket's), without
    the moment each was received (each socket is read at its own)."""
    return [record[:5] + record[6:] for record in RECORD.iter_unpack(wake.records) if record[0] != 0]


@pytest.mark.parametrize("split", [False, True], ids=["one socket", "execs split off"])
def test_c_and_python_capture_the_same_messages(split: bool, sleepers: list[subprocess.Popen]) -> None:
    c_sockets, python_sockets = subscribed(split), subscribed(split)
    try:
        sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "captured"],
                                   stdin=subprocess.PIPE)
        finished = subprocess.run(["bash", "-c", "for i in 1 2 3; do /bin/true; done"], check=True)
        assert finished.returncode == 0
        wait_for(lambda: Path(f"/proc/{sleeper.pid}/cmdline").read_bytes().endswith(b"captured\0"), 10,
                 "the sleeper to exec")
        in_c = capture_wake(*c_sockets, "/proc/", 512, native=True)
        in_python = capture_wake(*python_sockets, "/proc/", 512, native=False)
        c_records, python_records = process_events(in_c), process_events(in_python)
        common = min(len(c_records), len(python_records))  # each socket drained at its own moment
        assert common >= 8 and c_records[:common] == python_records[:common]
        execs = [record for record in c_records if record[0] == PROC_EVENT_EXEC and record[7] == sleeper.pid]
        assert execs and execs[-1][6] >= 0, "the live process's EXEC points at its reads"
        read = in_c.reads[execs[-1][6]]
        assert read.pid == sleeper.pid and read.cmdline.endswith(b"captured\0")
        assert in_c.items == sum(1 for record in c_records if record[0] in (PROC_EVENT_EXEC, 0x80000000)
                                 and record[7] == record[8])
        assert (in_c.enobufs, in_python.enobufs) == (0, 0)
        sleeper.stdin.close()
        sleeper.wait(10)
    finally:
        unsubscribe(*c_sockets, *python_sockets)


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_gather_takes_wake_ups_until_a_frame_is_due_or_the_lifeline_closes(native: bool) -> None:
    main, execs = subscribed(split=True)
    lifeline_in, lifeline_out = os.pipe()
    try:
        start = time.monotonic()
        timing = capture.Timing(start, start, 0.0, 0.3)  # nothing waits: the first item starts a 0.3 s hold
        child = subprocess.Popen(["/bin/true", "gathered"])
        records: list[tuple] = []
        while not any(record[0] == PROC_EVENT_EXEC and record[8] == child.pid for record in records):
            assert time.monotonic() - start < 10, "the child's EXEC never came"
            called = time.monotonic()
            taken = capture.gather(main, execs, lifeline_in, -1, "/proc/", 512, 0, False, timing, 256, 128, 0.1,
                                   1024, native=native)
            # Returned when the frame was due: a 0.3 s hold from its first item, which came after the call.
            assert taken.fired == 0 and time.monotonic() - called >= 0.3
            assert taken.timing.send_at - taken.timing.gathered_at == pytest.approx(0.3)
            records += [record for wake in taken.wakes for record in RECORD.iter_unpack(wake.records)]
            timing = capture.Timing(time.monotonic(), time.monotonic(), 0.0, 0.3)
        child.wait(10)
        os.close(lifeline_out)
        lifeline_out = -1
        start = time.monotonic()
        taken = capture.gather(main, execs, lifeline_in, -1, "/proc/", 512, 0, False,
                               capture.Timing(start, start + 60, 0.0, 60.0), 256, 128, 0.1, 1024, native=native)
        assert taken.fired & capture.LIFELINE_FIRED and time.monotonic() - start < 5
    finally:
        for descriptor in (lifeline_in, lifeline_out):
            if descriptor >= 0:
                os.close(descriptor)
        unsubscribe(main, execs)


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_main_more_means_a_drain_stopped_at_its_limit_not_that_something_came_since(native: bool) -> None:
    """The reader takes again without waiting only behind a real backlog: after the EXECs, the main socket is
    drained once more (their FORKs came before them), and `main_more` says that drain stopped at `most`."""
    main, execs = subscribed(split=True)
    try:
        subprocess.run(["bash", "-c", "for i in 1 2 3 4 5; do /bin/true; done"], check=True)
        behind = capture_wake(main, execs, "/proc/", 1, native=native)  # one datagram a drain: more is left
        assert behind.main_more
        wait_for(lambda: not capture_wake(main, execs, "/proc/", 512, native=native).main_more, 10,
                 "the backlog drained")
        shell = subprocess.run(["bash", "-c", "/bin/true; echo $$"], capture_output=True, text=True, check=True)
        taken = capture_wake(main, execs, "/proc/", 512, native=native)
        records = list(RECORD.iter_unpack(taken.records))
        children = {record[10] for record in records if record[0] == 1 and record[9] == int(shell.stdout)}  # FORKs
        execs_taken = {record[8] for record in records if record[0] == PROC_EVENT_EXEC}
        assert not taken.main_more
        assert children and children <= execs_taken, "the shell's child: its FORK and its EXEC in one take"
    finally:
        unsubscribe(main, execs)
