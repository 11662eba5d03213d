"""The files opened for exec (actors/datasets/process/exec_files.py) against the real kernel's fanotify, alone and in
the connector's reader process."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from actors.datasets.process.exe_hash import file_id
from actors.datasets.process import exec_files as exec_files_module
from actors.datasets.process.exec_files import ExecFile, ExecFiles, elf_interpreter, exec_mounts
from actors.datasets.process.proc_connector import ProcConnector, ProcessExec
from tests.agent_harness import wait_for

TRUE = os.path.realpath("/bin/true")
SHELL = os.path.realpath("/bin/sh")
STATIC = os.path.realpath("/sbin/ldconfig")  # glibc's ldconfig is linked statically: no ELF interpreter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify on whole filesystems needs CAP_SYS_ADMIN: root")


def run(argv: list[str]) -> int:
    """Run a program to its end; its pid (gone by the time it is returned)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.wait(10)
    return process.pid


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def exec_files() -> Iterator[ExecFiles]:
    opened = ExecFiles().open()
    try:
        yield opened
    finally:
        opened.close()


def expected(path: str) -> ExecFile:
    return ExecFile(path, file_id(os.stat(path)))


def test_each_exec_names_the_file_proc_would_have_named_after_the_process_is_gone(exec_files: ExecFiles,
                                                                                  script: str) -> None:
    dynamic, shell_script = run([TRUE]), run([script])
    assert not Path(f"/proc/{dynamic}").exists()
    found = exec_files.take([dynamic, shell_script], {dynamic, shell_script})
    assert found[dynamic] == expected(TRUE)  # the program, not its ELF interpreter opened after it
    assert found[shell_script] == expected(SHELL)  # a script's exe is its interpreter, as in /proc/PID/exe
    if os.path.exists(STATIC) and elf_interpreter_of(STATIC) is None:
        static = run([STATIC, "--version"])
        assert exec_files.take([static], {static})[static] == expected(STATIC)


def test_descriptors_are_closed_when_their_exec_is_taken_or_after_a_while_without_one(exec_files: ExecFiles,
                                                                                     monkeypatch) -> None:
    before = len(os.listdir("/proc/self/fd"))
    read, asked = [run([TRUE]) for _ in range(10)], [run([TRUE]) for _ in range(10)]
    assert exec_files.take(read, set()) == {}  # read in time from /proc: nothing to name, closed all the same
    assert set(exec_files.take(asked, set(asked))) == set(asked)
    assert len(os.listdir("/proc/self/fd")) == before
    clock = [1000.0]
    monkeypatch.setattr(exec_files_module.time, "monotonic", lambda: clock[0])
    failed = [run([TRUE]) for _ in range(10)]  # as if their execs had failed: no EXEC will come
    exec_files.take([], set())
    assert len(os.listdir("/proc/self/fd")) >= before + 10  # held a while: the EXEC may come in the next read
    clock[0] += exec_files_module.ORPHAN_SECONDS + 1
    exec_files.take([], set())
    assert len(os.listdir("/proc/self/fd")) == before
    assert exec_files.take(failed, set(failed)) == {}


def test_an_exec_storm_beyond_the_descriptors_it_may_hold_waits_in_the_kernels_queue(exec_files: ExecFiles,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(exec_files, "_kept", 300)  # less than the storm's opens: the rest stays queued
    pids = [run([TRUE]) for _ in range(400)]  # 800 opens: the program and its loader
    found: dict[int, ExecFile] = {}
    for start in range(0, 400, 50):  # EXECs read 50 at a time, as a delayed reader would
        found.update(exec_files.take(pids[start:start + 50], set(pids)))
        assert len(os.listdir("/proc/self/fd")) < 300 + 50
    assert found == {pid: expected(TRUE) for pid in pids}


def test_elf_interpreter_reads_pt_interp_and_refuses_what_is_not_an_elf_program(tmp_path: Path, script: str) -> None:
    assert os.path.realpath(opened_interpreter(TRUE)) == os.path.realpath(readelf_interpreter(TRUE))
    assert elf_interpreter_of(script) is None
    garbage = tmp_path / "garbage"
    for content in (b"", b"\x7fELF", b"\x7fELF\x02\x01" + b"\xff" * 58, os.urandom(4096),
                    Path(TRUE).read_bytes()[:70]):
        garbage.write_bytes(content)
        assert elf_interpreter_of(str(garbage)) is None


def test_exec_mounts_skip_pseudo_and_noexec_filesystems_and_unescape_names() -> None:
    mountinfo = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "23 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw\n"
        "24 22 0:5 / /dev rw,nosuid - devtmpfs udev rw\n"
        "25 22 0:30 / /tmp rw,nosuid,nodev,noexec - tmpfs tmpfs rw\n"
        "26 22 0:31 / /mnt/my\\040disk rw - xfs /dev/sdb1 rw\n"
        "27 22 0:32 / /sys/fs/cgroup rw master:2 - cgroup2 cgroup2 rw\n"
        "28 22 0:33 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw\n"
        "garbage\n"
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    )
    assert exec_mounts(mountinfo) == ["/", "/dev", "/mnt/my disk", "/var/lib/docker/overlay2/x/merged"]


def test_the_reader_process_gives_the_executable_of_execs_it_could_not_read(tmp_path: Path, script: str) -> None:
    # The enrichment reads nothing, as if every process were gone before its /proc could be read.
    with_files = ProcConnector("/proc/", lambda reads: None).open()
    without = ProcConnector("/proc/", lambda reads: None, exec_files=False).open()
    copy = tmp_path / "mytrue"
    shutil.copy(TRUE, copy)
    try:
        pids = {run([TRUE]): TRUE, run([script]): SHELL, run([str(copy)]): str(copy)}
        for connector, files in ((with_files, True), (without, False)):
            execs: dict[int, ProcessExec] = {}

            def read_all(connector: Any = connector, execs: dict[int, ProcessExec] = execs) -> bool:
                execs.update((item.pid, item) for item in connector.read(0.1)
                             if isinstance(item, ProcessExec) and item.pid in pids)
                return len(execs) == len(pids)
            wait_for(read_all, 10, "the EXECs of the three processes")
            for pid, path in pids.items():
                assert execs[pid].details is None
                assert execs[pid].exec_file == (expected(path) if files else None)
    finally:
        with_files.close()
        without.close()


def elf_interpreter_of(path: str) -> bytes | None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return elf_interpreter(descriptor)
    finally:
        os.close(descriptor)


def opened_interpreter(path: str) -> str:
    interpreter = elf_interpreter_of(path)
    assert interpreter is not None, f"{path} names no ELF interpreter"
    return os.fsdecode(interpreter)


def readelf_interpreter(path: str) -> str:
    """PT_INTERP as binutils' readelf prints it, else as the loader the kernel maps (ldd's first absolute path)."""
    if shutil.which("readelf"):
        output = subprocess.run(["readelf", "-l", path], capture_output=True, text=True, check=True).stdout
        return output.split("[Requesting program interpreter: ", 1)[1].split("]", 1)[0]
    lines = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout.splitlines()
    return next(line.split()[0] for line in lines if line.strip().startswith("/"))
