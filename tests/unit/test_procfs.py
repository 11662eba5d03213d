"""Tests of reading the host (actors/hostfs/procfs.py, actors/hostfs/outcome.py): /proc/PID/stat, OS errors as
outcomes, on the real /proc and on synthetic trees."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from actors.hostfs import procfs
from actors.hostfs.entity import start_time_nanosecond
from actors.hostfs.outcome import Outcome, denied, outcome, vanished
from actors.hostfs.procfs import NANOS_PER_TICK, USER_HZ, ProcStat, Unreadable, parse_stat, read_stat


def stat_line(pid: int, comm: str, state: str = "S", ppid: int = 1, flags: int = 0x400100,
              start_ticks: int = 987_654) -> bytes:
    rest = [state, str(ppid), str(pid), str(pid), "0", "-1", str(flags)] + ["0"] * 12 + [str(start_ticks)]
    return f"{pid} ({comm}) {' '.join(rest + ['0'] * 10)}\n".encode()


@pytest.mark.parametrize("comm", ["sshd", "my (odd) name", "a) b (c", ")", "two  spaces", "x) S 1 2 3"])
def test_stat_parsing_survives_spaces_and_parentheses_in_comm(comm: str) -> None:
    assert parse_stat(stat_line(4242, comm, "R", 7, 0x200040, 123)) == ProcStat(4242, comm, "R", 7, 0x200040, 123)


@pytest.mark.parametrize("raw", [b"", b"garbage", b"4242 (truncated", b"4242 (sshd) S 1 2", b"x (sshd) " +
                                 b" ".join([b"S"] + [b"1"] * 25), stat_line(1, "a").replace(b"987654", b"soon")])
def test_malformed_stat_is_none(raw: bytes) -> None:
    assert parse_stat(raw) is None


def test_stat_of_this_process_from_the_real_proc() -> None:
    stat = read_stat(f"/proc/{os.getpid()}")
    assert stat is not None
    assert stat.pid == os.getpid() and stat.ppid == os.getppid() and stat.state in ("R", "S")
    with open("/proc/self/comm") as comm:
        assert stat.comm == comm.read().rstrip("\n")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert 0 < stat.start_ticks <= uptime * USER_HZ + 1


def test_stat_of_a_gone_or_unreadable_process_is_none(tmp_path: Path) -> None:
    assert read_stat(tmp_path / "proc" / "999999") is None  # never there
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "stat").mkdir()  # EISDIR: unreadable, not a crash
    assert read_stat(tmp_path / "123") is None


def test_a_process_that_exited_is_none_not_an_error() -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert read_stat(f"/proc/{child}") is None
    assert procfs.read_link(f"/proc/{child}/exe") is None


def test_whole_and_first_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (procfs.FIRST_READ_BYTES * 3 + 5))
    assert len(procfs.read_bytes(big)) == procfs.FIRST_READ_BYTES * 3 + 5
    assert len(procfs.read_bytes(big, whole=False)) == procfs.FIRST_READ_BYTES
    assert procfs.read_bytes(tmp_path / "absent") is None
    assert procfs.read_bytes(big / "below-a-file") is None  # ENOTDIR: absent too


def test_unreadable_names_the_path_and_its_outcome(tmp_path: Path) -> None:
    with pytest.raises(Unreadable) as raised:
        procfs.read_bytes(tmp_path)  # a directory: EISDIR
    assert raised.value.outcome is Outcome.OTHER and str(tmp_path) in str(raised.value)
    denied_error = Unreadable("/proc/1/environ", PermissionError(errno.EACCES, "Permission denied"))
    assert denied_error.outcome is Outcome.DENIED and "run as root" in str(denied_error)


@pytest.mark.parametrize("code, expected", [
    (errno.ENOENT, Outcome.VANISHED), (errno.ENOTDIR, Outcome.VANISHED), (errno.ESRCH, Outcome.VANISHED),
    (errno.EACCES, Outcome.DENIED), (errno.EPERM, Outcome.DENIED),
    (errno.EIO, Outcome.OTHER), (errno.EISDIR, Outcome.OTHER), (errno.EINVAL, Outcome.OTHER), (None, Outcome.OTHER),
])
def test_os_errors_become_named_outcomes(code: int | None, expected: Outcome) -> None:
    error = OSError(code, "x") if code is not None else OSError("no errno")
    assert outcome(error) is expected
    assert vanished(error) == (expected is Outcome.VANISHED) and denied(error) == (expected is Outcome.DENIED)


def test_real_errors_map_to_their_outcome(tmp_path: Path) -> None:
    with pytest.raises(OSError) as gone:
        os.open(tmp_path / "absent", os.O_RDONLY)
    assert outcome(gone.value) is Outcome.VANISHED
    with pytest.raises(OSError) as not_a_link:
        os.readlink(tmp_path)
    assert outcome(not_a_link.value) is Outcome.OTHER


def test_one_clock_tick_constant_and_go_sysinfos_arithmetic() -> None:
    assert USER_HZ == 100 and NANOS_PER_TICK * USER_HZ == 1_000_000_000
    assert start_time_nanosecond(150) == 500_000_000
    assert start_time_nanosecond(201) == 9_999_999  # float64(201) / 100 * 1e9 = 2009999999.99..., truncated as Go does
