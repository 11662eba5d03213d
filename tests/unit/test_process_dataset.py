"""Tests of the process dataset (actors/datasets/process/dataset.py), its hasher (actors/datasets/process/exe_hash.py) and the connector's
message decoding (actors/datasets/process/proc_connector.py), on synthetic host trees and the real /proc."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any, Iterable

import pytest

from actors.options import ConfigError
from actors.datasets import DatasetContext
from actors.datasets.process import dataset as process_dataset
from actors.datasets.process.dataset import (CHANGED_IMAGE, ERROR, EXISTING, STARTED, STOPPED, ProcessDataset,
                                     capability_names, container_id, read_details)
from actors.datasets.process.options import parse_options as process_options
from actors.datasets.process.exec_files import ExecFile
from actors.ecs import assert_ecs
from actors.event import CHANGE, ECS_VERSION, STATE, Event
from actors.datasets.process.exe_hash import (HASH_TYPES, BackgroundHasher, ExecutableHasher, HashResult, TokenBucket,
                                              file_id, new_digest)
from actors.datasets.process.options import HashOptions, hash_options
from actors.datasets.process.capture import (PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, PROC_EVENT_NONE,
                                             decode_datagram, read_execs)
from actors.datasets.process.proc_connector import ProcessExec, ProcessExit, exit_status_code, subscribe_message
from tests.agent_harness import wait_for
from tests.hostfs import make_hostfs
from tests.sample_support import EVENT_FIELDS, flat_field_names, sample_common, sample_path

SAMPLE = sample_path("process")

HOST_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
BOOT_TIME = 1_700_000_000
PASSWD = "root:x:0:0:root:/root:/bin/bash\nelastic:x:1000:1000:Elastic User:/home/elastic:/bin/zsh\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nelastic:x:1000:\nnogroup:x:65534:\n"
DOCKER_ID = "3f0c7b5a" * 8
PF_KTHREAD = 0x00200000
ALL_CAPS = (1 << 41) - 1
DOCKER_CAPS = 0xA80425FB  # the default capability set of a docker container


# --------------------------------------------------------------------------------------------------------
# Synthetic host trees
# --------------------------------------------------------------------------------------------------------

def build_host(root: Path) -> Path:
    """A host root with machine-id, btime, boot id, passwd and group, and no processes yet."""
    make_hostfs(root, machine_id=HOST_ID, boot_time=BOOT_TIME)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "proc").mkdir(exist_ok=True)
    return root


def add_process(root: Path, pid: int, *, comm: str = "sshd", ppid: int = 1, ticks: int = 12_345,
                flags: int = 0x400100, state: str = "S", exe: str | None = "/usr/sbin/sshd", cwd: str | None = "/",
                args: Iterable[str] = ("/usr/sbin/sshd", "-D"),
                uids: tuple[str, str, str] = ("0", "0", "0"), gids: tuple[str, str, str] = ("0", "0", "0"),
                cap_eff: int = 0, cap_prm: int = 0, cgroup: str = "0::/system.slice/ssh.service\n",
                skip: Iterable[str] = ()) -> Path:
    """Write /proc/PID/{stat,status,cmdline,cgroup} and the exe/cwd links (files named in `skip` are left out)."""
    directory = root / "proc" / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "stat": f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 {flags} 100 0 0 0 3 4 0 0 20 0 1 0 {ticks} 10000 200 "
                "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n",
        "status": f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t{ppid}\n"
                  f"Uid:\t{uids[0]}\t{uids[1]}\t{uids[2]}\t{uids[1]}\n"
                  f"Gid:\t{gids[0]}\t{gids[1]}\t{gids[2]}\t{gids[1]}\n"
                  f"CapInh:\t0000000000000000\nCapPrm:\t{cap_prm:016x}\nCapEff:\t{cap_eff:016x}\n",
        "cmdline": "".join(f"{arg}\0" for arg in args),
        "cgroup": cgroup,
    }
    for name, content in files.items():
        if name not in skip:
            (directory / name).write_text(content)
    for name, target in (("exe", exe), ("cwd", cwd)):
        if target is not None and name not in skip:
            (directory / name).symlink_to(target)
    return directory


def remove_process(root: Path, pid: int) -> None:
    shutil.rmtree(root / "proc" / str(pid))


def dataset(root: Path, host_id: str = HOST_ID, **options: Any) -> ProcessDataset:
    return process_dataset.create(DatasetContext(hostfs=root, options=options, host_id=host_id))


def by_action(events: Iterable[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.action, []).append(event)
    return grouped


def pids(events: Iterable[Event]) -> list[int]:
    return [event.fields["process"]["pid"] for event in events]


def document(event: Event) -> dict[str, Any]:
    """The ECS document as the runtime writes it (checked for ECS validity on the way)."""
    doc = event.stamped(1).to_document({})
    assert_ecs(doc, EVENT_FIELDS)
    return doc


def exec_item(pid: int, details: Any = None, *, ppid: int | None = 1, fork_boot_ns: int | None = None,
              boot_ns: int = 5_000_000_000, epoch: float = 1_700_000_005.0,
              exec_file: ExecFile | None = None) -> ProcessExec:
    return ProcessExec(pid=pid, time=epoch, boot_ns=boot_ns, ppid=ppid, fork_boot_ns=fork_boot_ns, details=details,
                       delay_ns=0, exec_file=exec_file)


def exit_item(pid: int, *, code: int = 0, boot_ns: int = 5_001_000_000, epoch: float = 1_700_000_005.001,
              ppid: int | None = 1) -> ProcessExit:
    return ProcessExit(pid=pid, time=epoch, boot_ns=boot_ns, ppid=ppid, exit_code=code, delay_ns=0)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return build_host(tmp_path / "hostfs")


# --------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------

def test_options_default_to_auditbeats() -> None:
    options = process_options({})
    assert options.backend == "auto"
    assert options.hash == HashOptions(enabled=True, hash_types=("sha1",), max_file_size=100 * 1024 ** 2,
                                       scan_rate_per_sec=50 * 1024 ** 2)


def test_options_read_sizes_as_strings_or_bytes() -> None:
    options = process_options({"backend": "NETLINK", "hash": {"hash_types": ("SHA256", "xxh64"),
                                                               "max_file_size": "1 GiB", "scan_rate_per_sec": 1024}})
    assert options.backend == "netlink"
    assert options.hash.hash_types == ("sha256", "xxh64")
    assert options.hash.max_file_size == 1024 ** 3 and options.hash.scan_rate_per_sec == 1024


@pytest.mark.parametrize("raw, setting", [
    ({"backend": "kernel_tracing"}, "process.backend"),
    ({"hash": {"hash_types": ["sha1", "crc32"]}}, "process.hash.hash_types"),
    ({"hash": {"hash_types": "sha1"}}, "process.hash.hash_types"),
    ({"hash": {"max_file_size": "lots"}}, "process.hash.max_file_size"),
    ({"hash": {"scan_rate_per_sec": 0}}, "process.hash.scan_rate_per_sec"),
    ({"hash": {"enabled": "yes"}}, "process.hash.enabled"),
    ({"hash": {"hash_type": ["sha1"]}}, "process.hash"),
])
def test_bad_options_are_config_errors_naming_the_setting(raw: dict, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        process_options(raw)


# --------------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------------

def test_every_auditbeat_hash_type_is_supported(tmp_path: Path) -> None:
    content = os.urandom(3000)
    expected = {
        "blake2b_256": hashlib.blake2b(content, digest_size=32).hexdigest(),
        "blake2b_384": hashlib.blake2b(content, digest_size=48).hexdigest(),
        "blake2b_512": hashlib.blake2b(content, digest_size=64).hexdigest(),
        **{name: hashlib.new(name, content).hexdigest()
           for name in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha512_224", "sha512_256",
                        "sha3_224", "sha3_256", "sha3_384", "sha3_512")},
    }
    path = tmp_path / "exe"
    path.write_bytes(content)
    hasher = ExecutableHasher(hash_options({"hash_types": list(HASH_TYPES)}))
    result = hasher.hash_path(str(path))
    assert result is not None and not result.error
    assert set(result.digests) == set(HASH_TYPES)
    assert {name: value for name, value in result.digests.items() if name != "xxh64"} == expected
    assert len(result.digests["xxh64"]) == 16


@pytest.mark.parametrize("text, value", [  # Go's cespare/xxhash test vectors, and longer inputs (32-byte stripes)
    (b"", 0xEF46DB3751D8E999),
    (b"a", 0xD24EC4F1A98C6E5B),
    (b"as", 0x1C330FB2D66BE179),
    (b"asd", 0x631C37CE72A97393),
    (b"asdf", 0x415872F599CEA71E),
    (b"abc", 0x44BC2CF5AD770999),
    (b"Call me Ishmael.", 0x6D04390FC9D61A90),
    (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
    (b"Some years ago--never mind how long precisely-", 0x8F26F2B986AFDC52),
    (b"Call me Ishmael. Some years ago--never mind how long precisely-", 0x02A2E85470D6FD96),
    (bytes(range(256)) * 4099, 0x080EDD5FEEE4274D),  # 1 MiB + 1 KiB: crosses CHUNK_BYTES
])
def test_xxh64_matches_the_reference_vectors_in_any_chunking(text: bytes, value: int, tmp_path: Path) -> None:
    whole = new_digest("xxh64")
    whole.update(text)
    pieces = new_digest("xxh64")
    step = 7 if len(text) < 1000 else 65_521  # chunks that never align with the 32-byte stripes
    for start in range(0, len(text), step):
        pieces.update(text[start:start + step])
    assert whole.hexdigest() == pieces.hexdigest() == f"{value:016x}"  # big-endian hex, as Go's Sum
    path = tmp_path / "exe"
    path.write_bytes(text)
    result = ExecutableHasher(hash_options({"hash_types": ["xxh64"]})).hash_path(str(path))
    assert result is not None and result.digests == {"xxh64": f"{value:016x}"}


def test_hasher_hashes_each_distinct_file_once(tmp_path: Path) -> None:
    path = tmp_path / "exe"
    path.write_bytes(b"one")
    hasher = ExecutableHasher(HashOptions())
    first = hasher.hash_path(str(path))
    assert hasher.hash_path(str(path)) == first and hasher.files_hashed == 1
    path.write_bytes(b"two, longer")  # new size and mtime: a new identity
    assert hasher.hash_path(str(path)).digests["sha1"] == hashlib.sha1(b"two, longer").hexdigest()
    assert hasher.files_hashed == 2


def test_hasher_refuses_files_over_max_file_size_with_auditbeats_error(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 2048)
    result = ExecutableHasher(hash_options({"max_file_size": "1 KiB"})).hash_path(str(path))
    assert result.digests == {} and result.error == "hasher: file size 2048 exceeds max file size"


def test_hasher_skips_a_file_that_is_no_longer_the_expected_one(tmp_path: Path) -> None:
    path = tmp_path / "exe"
    path.write_bytes(b"content")
    hasher = ExecutableHasher(HashOptions())
    assert hasher.hash_path(str(path), expected=(0, 0, 0, 0)) is None
    assert hasher.hash_path(str(tmp_path / "gone")) is None


def test_token_bucket_waits_for_the_scan_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=100, burst=200, clock=lambda: now[0], sleep=sleep)
    assert bucket.take(200) == 0.0  # starts full, as golang.org/x/time/rate
    assert bucket.take(50) == pytest.approx(0.5)
    now[0] += 10  # refills up to the burst only
    assert bucket.take(200) == 0.0
    assert bucket.take(100) == pytest.approx(1.0)
    assert slept == [pytest.approx(0.5), pytest.approx(1.0)]
    with pytest.raises(ValueError):
        bucket.take(201)


def test_token_bucket_says_how_long_until_tokens_are_there_without_spending_them() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=100, burst=200, clock=lambda: now[0], sleep=lambda seconds: None)
    assert bucket.delay(200) == 0.0 and bucket.delay(200) == 0.0  # nothing spent
    bucket.take(200)
    assert bucket.delay(50) == pytest.approx(0.5) and bucket.delay(1) == pytest.approx(0.01)
    now[0] += 0.5
    assert bucket.delay(50) == 0.0 and bucket.take(50) == 0.0


# --------------------------------------------------------------------------------------------------------
# Hashing off the dataset's thread
# --------------------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def slow_hasher(options: HashOptions, rate: int) -> ExecutableHasher:
    """A hasher whose scan rate is `rate` bytes/s from the start (a bucket of one chunk: no initial burst)."""
    return ExecutableHasher(options, bucket=TokenBucket(rate=rate, burst=MIB))


def new_digest_hex(hash_type: str, content: bytes) -> str:
    digest = new_digest(hash_type)
    digest.update(content)
    return digest.hexdigest()


def identity(path: Path) -> tuple[int, int, int, int]:
    return file_id(os.stat(path))


def test_background_hasher_gives_the_same_digests_and_shares_a_job_per_file(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(os.urandom(3 * MIB + 17))
    hashing = BackgroundHasher(ExecutableHasher(hash_options({"hash_types": ["sha256", "xxh64"]})))
    try:
        with hashing._condition:  # the hashing thread cannot take the job meanwhile: both requests find it unfinished
            job = hashing.request(identity(binary), [str(tmp_path / "gone"), str(binary)])  # the first path is gone
            assert job is not None and hashing.request(identity(binary), [str(binary)]) is job
        assert hashing.wait([job], 30), "the hash within 30 s"
        content = binary.read_bytes()
        assert job.result == HashResult({"sha256": hashlib.sha256(content).hexdigest(),
                                         "xxh64": new_digest_hex("xxh64", content)})
        again = hashing.request(identity(binary), [str(binary)])  # from the cache, finished at once
        assert again is not job and again.done and again.result == job.result
        assert hashing.hasher.files_hashed == 1 and hashing.pending() == 0
    finally:
        hashing.close()


def test_background_hasher_reports_files_it_cannot_hash(tmp_path: Path) -> None:
    big, changed = tmp_path / "big", tmp_path / "changed"
    big.write_bytes(b"x" * 2048)
    changed.write_bytes(b"before")
    was = identity(changed)
    changed.write_bytes(b"after, longer")
    hashing = BackgroundHasher(ExecutableHasher(hash_options({"max_file_size": "1 KiB"})))
    try:
        too_big = hashing.request(identity(big), [str(big)])
        not_the_same = hashing.request(was, [str(changed)])
        directory = hashing.request(identity(tmp_path), [str(tmp_path)])
        assert hashing.wait([too_big, not_the_same, directory], 30)
        assert too_big.result == HashResult(error="hasher: file size 2048 exceeds max file size")
        assert not_the_same.result is None  # no longer that file: no hash, no error
        assert directory.result == HashResult(error="hasher: not a regular file")
    finally:
        hashing.close()


def test_a_small_file_is_hashed_while_a_large_one_is_under_way(tmp_path: Path) -> None:
    large, small = tmp_path / "large", tmp_path / "small"
    large.write_bytes(b"\0" * (48 * MIB))  # at 12 MiB/s: 4 s at least, whatever the machine
    small.write_bytes(b"small")
    hashing = BackgroundHasher(slow_hasher(HashOptions(max_file_size=64 * MIB), rate=12 * MIB))
    try:
        slow = hashing.request(identity(large), [str(large)])
        wait_for(lambda: hashing.bytes_hashed > 0, 10, "the large file under way")
        started = time.monotonic()
        quick = hashing.request(identity(small), [str(small)])
        assert hashing.wait([quick], 3), "the small file is not held up behind the large one"
        assert quick.result.digests["sha1"] == hashlib.sha1(b"small").hexdigest()
        assert not slow.done and time.monotonic() - started < 3
        assert not hashing.wait([slow], 0.1)
    finally:
        hashing.close()
    unasked = tmp_path / "unasked"
    unasked.write_bytes(b"unasked")
    assert hashing.request(identity(unasked), [str(unasked)]) is None, "closed: no new work"
    assert not slow.done, "left unhashed"


def test_too_many_waiting_files_are_refused_not_queued_without_bound(tmp_path: Path) -> None:
    files = []
    for index in range(3):
        files.append(tmp_path / f"f{index}")
        files[-1].write_bytes(b"\0" * (2 * MIB + index))
    hashing = BackgroundHasher(slow_hasher(HashOptions(), rate=MIB), max_jobs=2)
    try:
        first, second = (hashing.request(identity(path), [str(path)]) for path in files[:2])
        assert first is not None and second is not None
        assert hashing.request(identity(files[2]), [str(files[2])]) is None
        assert hashing.request(identity(files[0]), [str(files[0])]) is first  # asked for already: not refused
    finally:
        hashing.close()


def test_a_large_executable_does_not_hold_up_the_stream_and_its_hash_follows(host: Path, tmp_path: Path) -> None:
    large, small = tmp_path / "large-binary", tmp_path / "small-binary"
    large.write_bytes(b"\x7fELF" + b"\0" * (24 * MIB))  # at 8 MiB/s: 3 s at least
    small.write_bytes(b"\x7fELF small")
    add_process(host, 3000, comm="large", exe=str(large), ticks=50_000)
    ds = dataset(host, hash={"max_file_size": "64 MiB"})
    ds.hasher.bucket = TokenBucket(rate=8 * MIB, burst=MIB)
    committed = ds.observe()
    try:
        add_process(host, 3001, comm="large", exe=str(large), ticks=60_000)
        add_process(host, 3002, comm="small", exe=str(small), ticks=60_001)
        started = time.monotonic()
        committed, events = ds.apply_stream(committed, [exec_item(3001, read_details(ds.proc, 3001)),
                                                        exec_item(3002, read_details(ds.proc, 3002))])
        assert time.monotonic() - started < 1.5, "the batch waits at most STREAM_HASH_WAIT for hashes"
        large_started, small_started = (document(event) for event in events)
        assert large_started["process"]["pid"] == 3001 and "hash" not in large_started["process"]
        assert "error" not in large_started  # not an error: the hash is on its way
        assert small_started["process"]["hash"] == {"sha1": hashlib.sha1(small.read_bytes()).hexdigest()}

        started = time.monotonic()
        committed, events = ds.apply_stream(committed, [exec_item(3003, None, fork_boot_ns=600_000_000_000)])
        assert time.monotonic() - started < 0.5, "a job that outlasted one budget is not waited for again"

        expected = hashlib.sha1(large.read_bytes()).hexdigest()
        wait_for(lambda: ds.hashing.pending() == 0, 60, "the large executable hashed")
        committed = ds.observe()  # the poll puts the finished hash into both processes of that file
        for pid in ("3000", "3001"):
            assert committed["processes"][pid]["hash"] == {"sha1": expected}
        assert all(document(event)["process"]["hash"] == {"sha1": expected}
                   for event in ds.state_report(committed) if event.fields["process"]["pid"] in (3000, 3001))
        _, events = ds.apply_stream(committed, [exit_item(3001)])
        [stopped] = events
        assert stopped.action == STOPPED and document(stopped)["process"]["hash"] == {"sha1": expected}
    finally:
        ds.close()


def test_a_hash_that_finishes_between_polls_is_on_the_stop_from_the_connector(host: Path, tmp_path: Path) -> None:
    large = tmp_path / "large-binary"
    large.write_bytes(b"\x7fELF" + b"\0" * (20 * MIB))
    ds = dataset(host, hash={"max_file_size": "64 MiB"})
    ds.hasher.bucket = TokenBucket(rate=8 * MIB, burst=MIB)
    committed = ds.observe()
    try:
        add_process(host, 3100, comm="large", exe=str(large), ticks=70_000)
        committed, [started] = ds.apply_stream(committed, [exec_item(3100, read_details(ds.proc, 3100))])
        assert "hash" not in document(started)["process"]
        wait_for(lambda: ds.hashing.pending() == 0, 60, "the large executable hashed")
        _, [stopped] = ds.apply_stream(committed, [exit_item(3100)])  # no poll in between
        assert document(stopped)["process"]["hash"] == {"sha1": hashlib.sha1(large.read_bytes()).hexdigest()}
        assert "hash" not in committed["processes"]["3100"], "the committed record was replaced, not changed"
    finally:
        ds.close()


# --------------------------------------------------------------------------------------------------------
# Parsing /proc files
# --------------------------------------------------------------------------------------------------------

def test_capability_masks_become_cap_names() -> None:
    assert capability_names(0) == []
    assert capability_names(1 << 21 | 1 << 39 | 1) == ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_BPF"]
    assert capability_names(ALL_CAPS)[-1] == "CAP_CHECKPOINT_RESTORE"
    assert capability_names(1 << 45) == ["CAP_45"]


@pytest.mark.parametrize("cgroup, expected", [
    (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", DOCKER_ID),
    (f"12:pids:/docker/{DOCKER_ID}\n11:cpu:/docker/{DOCKER_ID}\n", DOCKER_ID),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e.slice/cri-containerd-{DOCKER_ID}.scope\n",
     DOCKER_ID),
    (f"0::/kubepods/burstable/pod0c5e3f6c-1111-2222-3333-444455556666/{DOCKER_ID}\n", DOCKER_ID),
    (f"0::/machine.slice/libpod-{DOCKER_ID}.scope/container\n", DOCKER_ID),
    (f"0::/system.slice/crio-{DOCKER_ID}.scope\n", DOCKER_ID),
    ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
    (f"0::/system.slice/{DOCKER_ID}.service\n", None),
])
def test_container_id_from_the_cgroup_path(cgroup: str, expected: str | None) -> None:
    assert container_id(cgroup) == expected


# --------------------------------------------------------------------------------------------------------
# Scanning a synthetic host
# --------------------------------------------------------------------------------------------------------

def test_scan_reads_every_field_under_hostfs(host: Path) -> None:
    add_process(host, 1234, comm="zsh", ppid=1230, ticks=12_345, exe="/bin/zsh", cwd="/home/elastic",
                args=("-zsh", "--login"), uids=("1000", "1001", "1002"), gids=("1000", "1003", "1004"),
                cap_eff=1 << 10, cap_prm=1 << 10 | 1 << 13, cgroup=f"0::/system.slice/docker-{DOCKER_ID}.scope\n")
    snapshot = dataset(host).observe()
    [started] = dataset(host).diff({**snapshot, "processes": {}}, snapshot, at_startup=False)
    doc = document(started)
    assert doc["process"] == {
        "pid": 1234, "name": "zsh", "args": ["-zsh", "--login"], "parent": {"pid": 1230},
        "working_directory": "/home/elastic", "executable": "/bin/zsh", "start": "2023-11-14T22:15:23.450Z",
        "entity_id": process_dataset.process_entity_id(HOST_ID, 1234, 12_345),
        "thread": {"capabilities": {"effective": ["CAP_NET_BIND_SERVICE"],
                                    "permitted": ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]}},
        # ECS's process credentials: effective (process.user / process.group) and saved ids
        "user": {"id": "1001"}, "group": {"id": "1003"}, "saved_user": {"id": "1002"}, "saved_group": {"id": "1004"},
        **({"hash": doc["process"]["hash"]} if os.path.exists("/bin/zsh") else {}),
    }
    assert doc["user"] == {"id": "1000", "name": "elastic", "group": {"id": "1000", "name": "elastic"},
                           "effective": {"id": "1001", "group": {"id": "1003"}}}
    assert "process" not in doc.get("system", {}).get("audit", {})  # the saved ids are ECS fields now
    assert doc["container"] == {"id": DOCKER_ID}
    assert doc["message"] == "Process zsh (PID: 1234) by user elastic STARTED"


def test_entity_id_is_auditbeats_published_algorithm(host: Path) -> None:
    # sha256(hostID || int64le(pid) || int64le(start.Nanosecond()))[:12], base64; start = btime + ticks/100 s.
    ticks = 12_345  # 123.45 s after boot: Nanosecond() is 450,000,000
    expected = base64.b64encode(hashlib.sha256(
        HOST_ID.encode() + struct.pack("<q", 1234) + struct.pack("<q", 450_000_000)).digest()[:12]).decode()
    add_process(host, 1234, ticks=ticks)
    record = dataset(host).observe()["processes"]["1234"]
    assert record["entity_id"] == expected and len(expected) == 16


def test_entity_id_is_left_out_without_a_host_id(host: Path) -> None:
    add_process(host, 1234)
    [event] = dataset(host, host_id="").state_report(dataset(host, host_id="").observe())
    assert "entity_id" not in document(event)["process"]


def test_kernel_threads_are_left_out(host: Path) -> None:
    add_process(host, 2, comm="kthreadd", ppid=0, exe=None, cwd=None, args=(), flags=PF_KTHREAD)
    add_process(host, 3, comm="kworker/0:0", ppid=2, exe=None, cwd=None, args=(), flags=PF_KTHREAD)
    add_process(host, 4, comm="oldkthread", ppid=2, exe=None, cwd=None, args=(), flags=0)  # no flag: ppid 2, no exe
    add_process(host, 5, comm="rootzombie", ppid=1, exe=None, args=(), flags=0)  # uid 0 and no exe (Auditbeat)
    add_process(host, 6, comm="modprobe", ppid=2, exe="/usr/sbin/modprobe", args=("/sbin/modprobe", "-q", "x"))
    add_process(host, 7, comm="noexe", ppid=1, exe=None, args=(), uids=("1000", "1000", "1000"))
    processes = dataset(host).observe()["processes"]
    assert sorted(processes) == ["6", "7"]  # a usermode helper that exec'd is a real process, and so is a user's


def test_a_process_that_became_a_zombie_has_stopped(host: Path) -> None:
    add_process(host, 8, comm="worker", uids=("1000", "1000", "1000"))
    ds = dataset(host)
    before = ds.observe()
    remove_process(host, 8)
    add_process(host, 8, comm="worker", state="Z", exe=None, cwd=None, args=(), uids=("1000", "1000", "1000"))
    assert [event.action for event in ds.diff(before, ds.observe(), at_startup=False)] == [STOPPED]


def test_process_that_vanishes_while_read_is_skipped(host: Path) -> None:
    add_process(host, 100)
    (host / "proc/101").mkdir()  # listed, then gone before its stat is read
    add_process(host, 102, skip={"status", "cmdline"})  # gone after its stat was read
    add_process(host, 103, skip={"cmdline"})
    ds = dataset(host)
    assert sorted(ds.observe()["processes"]) == ["100"]
    assert ds.state_report(ds.observe())[0].action == EXISTING


def test_missing_exe_and_cwd_links_leave_their_fields_out(host: Path) -> None:
    add_process(host, 300, comm="app", uids=("1000", "1000", "1000"), skip={"exe", "cwd"})
    [event] = dataset(host).state_report(dataset(host).observe())
    doc = document(event)
    assert event.action == EXISTING and "error" not in doc
    assert "executable" not in doc["process"] and "working_directory" not in doc["process"]
    assert doc["process"]["args"] == ["/usr/sbin/sshd", "-D"]


def test_another_read_error_is_a_process_error_as_auditbeat(host: Path) -> None:
    directory = add_process(host, 400, comm="odd", skip={"cmdline"})
    (directory / "cmdline").mkdir()  # reading it fails with EISDIR: neither absent nor denied
    ds = dataset(host)
    snapshot = ds.observe()
    [state] = ds.state_report(snapshot)
    doc = document(state)
    assert state.action == ERROR and state.kind == CHANGE and state.type == ("info",)
    assert doc["error"]["message"].startswith("failed to load process information for PID 400: cannot read ")
    assert state.message == f"ERROR for PID 400: {doc['error']['message']}"
    remove_process(host, 400)
    assert ds.diff(snapshot, ds.observe(), at_startup=False) == []  # no stop for an error, as Auditbeat


def test_user_names_come_from_the_host_files_and_follow_their_changes(host: Path) -> None:
    add_process(host, 500, uids=("1000", "1000", "1000"), gids=("1000", "1000", "1000"))
    ds = dataset(host)
    assert ds.observe()["processes"]["500"]["user"] == "elastic"
    (host / "etc/passwd").write_text(PASSWD.replace("elastic:", "renamed:"))
    os.utime(host / "etc/passwd", ns=(1, 1))
    remove_process(host, 500)
    add_process(host, 500, ticks=99_999, uids=("1000", "1000", "1000"))
    assert ds.observe()["processes"]["500"]["user"] == "renamed"


def test_unknown_uid_has_no_user_name_and_no_by_user_in_the_message(host: Path) -> None:
    add_process(host, 600, comm="cron", uids=("4242", "4242", "4242"), gids=("4242", "4242", "4242"))
    [event] = dataset(host).state_report(dataset(host).observe())
    doc = document(event)
    assert doc["user"] == {"id": "4242", "group": {"id": "4242"}, "effective": {"id": "4242", "group": {"id": "4242"}}}
    assert {key: doc["process"][key] for key in ("user", "group", "saved_user", "saved_group")} == {
        "user": {"id": "4242"}, "group": {"id": "4242"}, "saved_user": {"id": "4242"}, "saved_group": {"id": "4242"}}
    assert event.message == "Process cron (PID: 600) is RUNNING"


def test_executable_over_max_file_size_is_reported_without_hash_and_with_error_message(host: Path,
                                                                                        tmp_path: Path) -> None:
    big = tmp_path / "big-binary"
    big.write_bytes(b"\x7fELF" + b"\0" * 4096)
    add_process(host, 700, comm="big", exe=str(big))
    ds = dataset(host, hash={"max_file_size": "1 KiB"})
    snapshot = ds.observe()
    [event] = ds.diff({**snapshot, "processes": {}}, snapshot, at_startup=False)
    doc = document(event)
    assert event.action == STARTED and "hash" not in doc["process"]
    assert doc["error"]["message"] == (f"failed to hash executable {big} for PID 700: "
                                       "hasher: file size 4100 exceeds max file size")
    assert event.message == "Process big (PID: 700) by user root STARTED"


def test_executables_are_hashed_once_and_non_ecs_types_go_under_system_audit(host: Path, tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"#!/bin/sh\necho tool\n")
    for pid in (800, 801, 802):
        add_process(host, pid, comm="tool", exe=str(binary))
    ds = dataset(host, hash={"hash_types": ["sha256", "sha3_256"]})
    events = ds.state_report(ds.observe())
    assert ds.hasher is not None and ds.hasher.files_hashed == 1
    doc = document(events[0])
    assert doc["process"]["hash"] == {"sha256": hashlib.sha256(binary.read_bytes()).hexdigest()}
    assert doc["system"]["audit"]["process"]["hash"] == {"sha3_256": hashlib.sha3_256(binary.read_bytes()).hexdigest()}


def test_hashing_can_be_disabled(host: Path, tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"tool")
    add_process(host, 900, exe=str(binary))
    ds = dataset(host, hash={"enabled": False})
    assert ds.hasher is None and "hash" not in ds.observe()["processes"]["900"]


# --------------------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------------------

def test_pid_reuse_is_a_stop_then_a_start(host: Path) -> None:
    add_process(host, 1000, comm="old", ticks=1_001)
    ds = dataset(host)
    before = ds.observe()
    remove_process(host, 1000)
    add_process(host, 1000, comm="new", ticks=2_002)
    events = ds.diff(before, ds.observe(), at_startup=False)
    assert [(event.action, event.fields["process"]["name"]) for event in events] == [(STOPPED, "old"),
                                                                                     (STARTED, "new")]
    assert events[0].fields["process"]["entity_id"] != events[1].fields["process"]["entity_id"]


def test_started_and_stopped_between_two_scans(host: Path) -> None:
    add_process(host, 1100, comm="stays")
    add_process(host, 1101, comm="goes")
    ds = dataset(host)
    before = ds.observe()
    remove_process(host, 1101)
    add_process(host, 1102, comm="comes", ppid=1100)
    grouped = by_action(ds.diff(before, ds.observe(), at_startup=False))
    assert pids(grouped[STOPPED]) == [1101] and pids(grouped[STARTED]) == [1102]
    assert grouped[STARTED][0].message == "Process comes (PID: 1102) by user root STARTED"
    assert grouped[STOPPED][0].message == "Process goes (PID: 1101) by user root STOPPED"
    for event in grouped[STOPPED] + grouped[STARTED]:
        assert event.kind == CHANGE and event.category == ("process",)
    assert grouped[STARTED][0].type == ("start",) and grouped[STOPPED][0].type == ("end",)


def test_an_exec_seen_by_the_poll_is_an_image_change(host: Path) -> None:
    add_process(host, 1200, comm="bash", exe="/usr/bin/bash", args=("bash",))
    ds = dataset(host)
    before = ds.observe()
    remove_process(host, 1200)
    add_process(host, 1200, comm="vim", exe="/usr/bin/vim", args=("vim", "notes"))  # same pid and start
    [event] = ds.diff(before, ds.observe(), at_startup=False)
    assert (event.action, event.type, event.message) == (CHANGED_IMAGE, ("change",),
                                                         "Process vim (PID: 1200) by user root CHANGED IMAGE")


def test_a_reboot_stops_every_process_of_the_old_boot(host: Path) -> None:
    add_process(host, 1, comm="systemd", ppid=0, ticks=10, exe="/usr/lib/systemd/systemd")
    before = dataset(host).observe()
    (host / "proc/sys/kernel/random/boot_id").write_text("c0ffee00-0000-4000-8000-000000000002\n")
    events = dataset(host).diff(before, dataset(host).observe(), at_startup=True)
    assert [event.action for event in events] == [STOPPED, STARTED]


def test_snapshot_survives_a_json_round_trip_without_spurious_changes(host: Path) -> None:
    add_process(host, 1300, comm="a", cap_eff=ALL_CAPS, cap_prm=ALL_CAPS,
                cgroup=f"0::/system.slice/docker-{DOCKER_ID}.scope\n")
    add_process(host, 1301, comm="b", args=("b", "with space", "ünïcode"), uids=("1000", "1000", "1000"))
    ds = dataset(host)
    stored = json.loads(json.dumps(ds.observe()))
    assert ds.diff(stored, ds.observe(), at_startup=True) == []
    assert dataset(host).diff(stored, dataset(host).observe(), at_startup=True) == []  # a restarted agent


def test_real_proc_snapshot_survives_a_json_round_trip() -> None:
    ds = dataset(Path("/"))
    snapshot = ds.observe()
    stored = json.loads(json.dumps(snapshot))
    later = ds.observe()
    changed = {event.fields["process"]["pid"] for event in ds.diff(stored, later, at_startup=True)}
    churn = set(snapshot["processes"]) ^ set(later["processes"])  # processes that really came or went
    assert changed <= {int(pid) for pid in churn}


def test_unknown_previous_snapshot_is_ignored_with_a_warning(host: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = dataset(host)
    with caplog.at_level(logging.WARNING, "hostaudit.process"):
        assert ds.diff({"processes": []}, ds.observe(), at_startup=True) == []
    assert "unknown format" in caplog.text
    assert ds.diff(None, ds.observe(), at_startup=False) == []


def test_state_report_is_one_existing_process_per_process(host: Path) -> None:
    add_process(host, 1400, comm="sshd")
    add_process(host, 1401, comm="cron", exe="/usr/sbin/cron", args=("cron", "-f"))
    events = dataset(host).state_report(dataset(host).observe())
    assert sorted(event.message for event in events) == ["Process cron (PID: 1401) by user root is RUNNING",
                                                         "Process sshd (PID: 1400) by user root is RUNNING"]
    for event in events:
        assert (event.action, event.kind, event.category, event.type) == (EXISTING, STATE, ("process",), ("info",))
        document(event)


# --------------------------------------------------------------------------------------------------------
# Stream items folded into the snapshot
# --------------------------------------------------------------------------------------------------------

def test_a_one_millisecond_process_is_started_and_stopped_from_the_stream(host: Path) -> None:
    ds = dataset(host)
    snapshot = ds.observe()
    fork_ns = 123_456_789_000
    items = [exec_item(2000, None, ppid=77, fork_boot_ns=fork_ns, boot_ns=fork_ns + 200_000),
             exit_item(2000, code=-9, boot_ns=fork_ns + 1_000_000, epoch=1_700_000_123.457)]
    snapshot, events = ds.apply_stream(snapshot, items)
    started, stopped = events
    assert (started.action, stopped.action) == (STARTED, STOPPED)
    start_doc, stop_doc = document(started), document(stopped)
    assert start_doc["process"]["pid"] == 2000 and start_doc["process"]["parent"] == {"pid": 77}
    assert start_doc["process"]["start"] == "2023-11-14T22:15:23.450Z"  # btime + 12,345 ticks
    assert start_doc["message"] == "Process (unknown) (PID: 2000) STARTED"
    assert stop_doc["process"]["exit_code"] == -9 and stop_doc["event"]["duration"] == 1_000_000
    assert stop_doc["process"]["end"] == "2023-11-14T22:15:23.457Z"
    assert stop_doc["@timestamp"] == "2023-11-14T22:15:23.457Z"
    assert start_doc["process"]["entity_id"] == stop_doc["process"]["entity_id"]
    assert "2000" not in snapshot["processes"]


def test_an_exec_read_in_time_gives_the_executable_and_args(host: Path) -> None:
    ds = dataset(host)
    snapshot = ds.observe()
    add_process(host, 2100, comm="curl", ppid=50, ticks=50_000, exe="/usr/bin/curl", args=("curl", "-s", "x"))
    details = read_details(ds.proc, 2100)
    fork_ns = 50_000 * 10_000_000 + 3_000_000
    snapshot, [started] = ds.apply_stream(snapshot, [exec_item(2100, details, fork_boot_ns=fork_ns)])
    doc = document(started)
    assert doc["process"]["executable"] == "/usr/bin/curl" and doc["process"]["args"] == ["curl", "-s", "x"]
    assert doc["process"]["parent"] == {"pid": 50} and started.timestamp == 1_700_000_005.0
    remove_process(host, 2100)
    _, [stopped] = ds.apply_stream(snapshot, [exit_item(2100, boot_ns=fork_ns + 2_500_000)])
    assert document(stopped)["event"]["duration"] == 2_500_000  # from the fork, to the nanosecond


def test_a_process_gone_before_its_proc_was_read_gets_the_executable_its_exec_opened_and_its_hash(
        host: Path) -> None:
    tool = host / "usr" / "bin" / "tool"
    tool.parent.mkdir(parents=True, exist_ok=True)
    tool.write_bytes(b"\x7fELF tool")
    opened = ExecFile("/usr/bin/tool", file_id(os.stat(tool)))
    ds = dataset(host)
    snapshot = ds.observe()
    snapshot, [started] = ds.apply_stream(snapshot, [exec_item(2120, None, ppid=50, exec_file=opened)])
    _, [stopped] = ds.apply_stream(snapshot, [exit_item(2120)])
    for doc in (document(started), document(stopped)):
        assert doc["process"]["executable"] == "/usr/bin/tool"
        assert doc["process"]["hash"] == {"sha1": hashlib.sha1(tool.read_bytes()).hexdigest()}
        assert "args" not in doc["process"]  # gone with the process: only the file outlives it
    assert document(started)["message"] == "Process tool (PID: 2120) STARTED"


def test_a_zombie_read_after_its_exe_link_went_gets_the_executable_its_exec_opened(host: Path) -> None:
    ds = dataset(host)
    committed = ds.observe()
    add_process(host, 2130, comm="true", state="Z", exe=None, args=())
    zombie = read_details(ds.proc, 2130)
    assert zombie is not None and zombie.exe is None
    opened = ExecFile("/usr/bin/true", (1, 2, 3, 4))
    _, [started] = ds.apply_stream(committed, [exec_item(2130, zombie, exec_file=opened)])
    doc = document(started)
    assert doc["process"]["executable"] == "/usr/bin/true" and doc["process"]["name"] == "true"
    # /proc wins when it named the executable: the exec's opens only fill what it could not.
    add_process(host, 2131, comm="curl", exe="/usr/bin/curl", args=("curl",))
    _, [started] = ds.apply_stream(committed, [exec_item(2131, read_details(ds.proc, 2131), exec_file=opened)])
    assert document(started)["process"]["executable"] == "/usr/bin/curl"


def test_a_process_read_as_it_died_keeps_the_parent_the_kernel_reported_at_fork(host: Path) -> None:
    ds = dataset(host)
    committed = ds.observe()
    add_process(host, 2150, comm="true", ppid=0, ticks=55_000)  # /proc/PID/stat of a dying task: ppid 0
    _, [started] = ds.apply_stream(committed, [exec_item(2150, read_details(ds.proc, 2150), ppid=321)])
    assert document(started)["process"]["parent"] == {"pid": 321}


def test_a_process_reported_from_the_stream_is_not_reported_again_by_the_poll(host: Path) -> None:
    ds = dataset(host)
    committed = ds.observe()
    add_process(host, 2200, comm="job", ticks=60_000)
    committed, events = ds.apply_stream(committed, [exec_item(2200, read_details(ds.proc, 2200))])
    assert [event.action for event in events] == [STARTED]
    current = ds.observe()
    assert ds.diff(committed, current, at_startup=False) == []
    committed = current
    remove_process(host, 2200)
    committed, events = ds.apply_stream(committed, [exit_item(2200, code=3)])
    assert [event.action for event in events] == [STOPPED]
    assert ds.diff(committed, ds.observe(), at_startup=False) == []


def test_a_late_stream_item_does_not_repeat_what_the_poll_reported(host: Path) -> None:
    ds = dataset(host)
    before = ds.observe()
    add_process(host, 2300, comm="seen", ticks=70_000)
    details = read_details(ds.proc, 2300)
    committed = ds.observe()
    assert [event.action for event in ds.diff(before, committed, at_startup=False)] == [STARTED]
    committed, events = ds.apply_stream(committed, [exec_item(2300, details)])  # the exec, delivered late
    assert events == []
    remove_process(host, 2300)
    current = ds.observe()
    assert [event.action for event in ds.diff(committed, current, at_startup=False)] == [STOPPED]
    assert ds.apply_stream(current, [exit_item(2300)])[1] == []  # its exit, delivered late


def test_a_fork_without_exec_is_left_to_the_poll(host: Path) -> None:
    ds = dataset(host)
    committed = ds.observe()
    # The connector never makes an item of a FORK; a child that exits before any poll leaves only its EXIT.
    committed, events = ds.apply_stream(committed, [exit_item(2400, code=0)])
    assert events == [] and "2400" not in committed["processes"]
    add_process(host, 2401, comm="worker", ticks=80_000)  # a forked worker alive at the next poll
    current = ds.observe()
    assert [event.action for event in ds.diff(committed, current, at_startup=False)] == [STARTED]
    _, events = ds.apply_stream(current, [exit_item(2401, code=1)])
    assert [(event.action, event.fields["process"]["exit_code"]) for event in events] == [(STOPPED, 1)]


def test_an_exec_by_a_reported_process_is_an_image_change(host: Path) -> None:
    add_process(host, 2500, comm="bash", ticks=90_000, exe="/usr/bin/bash", args=("bash",))
    ds = dataset(host)
    committed = ds.observe()
    remove_process(host, 2500)
    add_process(host, 2500, comm="python3", ticks=90_000, exe="/usr/bin/python3", args=("python3", "x.py"))
    committed, [event] = ds.apply_stream(committed, [exec_item(2500, read_details(ds.proc, 2500))])
    assert event.action == CHANGED_IMAGE and document(event)["process"]["executable"] == "/usr/bin/python3"
    assert ds.diff(committed, ds.observe(), at_startup=False) == []


def test_an_unreadable_exec_of_a_reported_process_keeps_what_the_poll_read(host: Path) -> None:
    add_process(host, 2550, comm="bash", ticks=91_000, exe="/usr/bin/bash", args=("bash",))
    ds = dataset(host)
    committed = ds.observe()  # the poll saw the forked child before its exec
    fork_ns = 91_000 * 10_000_000 + 500_000
    committed, events = ds.apply_stream(committed, [exec_item(2550, None, fork_boot_ns=fork_ns),
                                                    exit_item(2550, code=0, boot_ns=fork_ns + 4_000_000)])
    [stopped] = events
    assert stopped.action == STOPPED and document(stopped)["process"]["executable"] == "/usr/bin/bash"


def test_exec_details_are_read_for_several_processes_at_once(host: Path) -> None:
    add_process(host, 2560, comm="a", exe="/usr/bin/a", args=("a",))
    add_process(host, 2561, comm="b", exe="/usr/bin/b", args=("b", "-x"))
    proc = str(host / "proc") + "/"
    first, gone, second = [process_dataset.details_of(proc, reads)
                           for reads in read_execs(proc, [2560, 2562, 2561])]
    assert gone is None
    assert (first.exe, first.args, first.stat.comm) == ("/usr/bin/a", ("a",), "a")
    assert (second.exe, second.args, second.ids) == ("/usr/bin/b", ("b", "-x"), ("0", "0", "0", "0", "0", "0"))


def test_a_reused_pid_whose_exit_was_lost_is_a_stop_then_a_start(host: Path) -> None:
    add_process(host, 2600, comm="old", ticks=1_000)
    ds = dataset(host)
    committed = ds.observe()
    remove_process(host, 2600)
    add_process(host, 2600, comm="new", ticks=95_000)
    _, events = ds.apply_stream(committed, [exec_item(2600, read_details(ds.proc, 2600))])
    assert [(event.action, event.fields["process"]["name"]) for event in events] == [(STOPPED, "old"),
                                                                                     (STARTED, "new")]


def test_stream_items_before_the_first_poll_are_left_to_it(host: Path) -> None:
    assert dataset(host).apply_stream(None, [exec_item(1, None), exit_item(1)]) == (None, [])


def test_approximate_start_from_the_stream_matches_the_polls_exact_one(host: Path) -> None:
    ds = dataset(host)
    committed = ds.observe()
    fork_ns = 40_000 * 10_000_000 + 9_990_000  # the connector's clock is a hair later than the task's start
    committed, _ = ds.apply_stream(committed, [exec_item(2700, None, fork_boot_ns=fork_ns)])
    add_process(host, 2700, comm="late", ticks=40_000)  # still alive at the poll, read exactly this time
    assert committed["processes"]["2700"]["ticks"] == 40_000 or committed["processes"]["2700"]["approx"]
    assert ds.diff(committed, ds.observe(), at_startup=False) == []


# --------------------------------------------------------------------------------------------------------
# ECS and the sample document
# --------------------------------------------------------------------------------------------------------

def test_every_action_gives_valid_ecs(host: Path, tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"tool")
    add_process(host, 3000, exe=str(binary), cap_eff=ALL_CAPS, cap_prm=ALL_CAPS,
                cgroup=f"0::/docker/{DOCKER_ID}\n")
    add_process(host, 3001, skip={"exe", "cwd"}, uids=("1000", "1000", "1000"))
    ds = dataset(host, hash={"hash_types": list(HASH_TYPES)})
    snapshot = ds.observe()
    events = list(ds.state_report(snapshot)) + list(ds.diff({**snapshot, "processes": {}}, snapshot, False))
    events += ds.diff(snapshot, {**snapshot, "processes": {}}, False)
    events += ds.apply_stream(snapshot, [exit_item(3000, code=2), exec_item(3002, None), exit_item(3002)])[1]
    assert {event.action for event in events} == {EXISTING, STARTED, STOPPED}
    for event in events:
        document(event)


def sample_document(root: Path, tmp_path: Path) -> dict[str, Any]:
    """The process_started document of a synthetic sshd, as the runtime would write it."""
    build_host(root)
    binary = tmp_path / "sshd"
    binary.write_bytes(b"\x7fELF sample sshd")
    add_process(root, 1234, comm="sshd", ppid=1, ticks=12_345, exe=str(binary), cwd="/",
                args=("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",), cap_eff=DOCKER_CAPS,
                cap_prm=DOCKER_CAPS,
                cgroup=f"0::/system.slice/docker-{DOCKER_ID}.scope\n")
    ds = dataset(root)
    snapshot = ds.observe()
    [started] = ds.diff({**snapshot, "processes": {}}, snapshot, at_startup=False)
    common = sample_common({"id": HOST_ID, "name": "ubuntu-jammy", "hostname": "ubuntu-jammy"})
    started = dataclasses.replace(started, timestamp=1_700_018_680.123)
    return started.stamped(7).to_document(common)


def test_sample_document_has_the_fields_we_emit(tmp_path: Path) -> None:
    doc = sample_document(tmp_path / "hostfs", tmp_path)
    assert_ecs(doc, EVENT_FIELDS)
    if os.environ.get("HOSTAUDIT_UPDATE_SAMPLES") == "1":
        doc["process"]["executable"] = "/usr/sbin/sshd"
        SAMPLE.write_text(json.dumps(doc, indent=2) + "\n")
    sample = json.loads(SAMPLE.read_text())
    assert_ecs(sample, EVENT_FIELDS)
    assert flat_field_names(doc) == flat_field_names(sample)
    assert sample["message"] == doc["message"]
    assert sample["event"]["action"] == STARTED and sample["ecs"]["version"] == ECS_VERSION


# --------------------------------------------------------------------------------------------------------
# Connector messages
# --------------------------------------------------------------------------------------------------------

def connector_datagram(what: int, data: bytes, seq: int = 5, cpu: int = 1, timestamp: int = 10 ** 12,
                       ack: int = 0) -> bytes:
    event = struct.pack("=IIQ", what, cpu, timestamp) + data
    cn_msg = struct.pack("=IIIIHH", 1, 1, seq, ack, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn_msg), 3, 0, 0, 0) + cn_msg


def test_connector_messages_are_decoded() -> None:
    fork = connector_datagram(PROC_EVENT_FORK, struct.pack("=iiii", 10, 10, 11, 11))
    execed = connector_datagram(PROC_EVENT_EXEC, struct.pack("=ii", 11, 11) + b"\0" * 16, seq=6)
    exited = connector_datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 11, 11, 0x0300, 17, 10, 10), seq=7)
    ack = connector_datagram(PROC_EVENT_NONE, struct.pack("=I", 0) + b"\0" * 20, ack=78)
    events = decode_datagram(fork + execed) + decode_datagram(exited) + decode_datagram(ack)
    assert [(event.what, event.seq, event.data) for event in events] == [
        (PROC_EVENT_FORK, 5, (10, 10, 11, 11)), (PROC_EVENT_EXEC, 6, (11, 11)),
        (PROC_EVENT_EXIT, 7, (11, 11, 0x0300, 17, 10, 10)), (PROC_EVENT_NONE, 5, (0,))]
    assert events[-1].ack == 78 and events[0].timestamp_ns == 10 ** 12
    assert decode_datagram(b"\x03\x00") == []


def test_subscribe_message_layout() -> None:
    message = subscribe_message(port=4242, operation=1, ack=9)
    assert struct.unpack("=IHHII", message[:16]) == (40, 3, 0, 0, 4242)
    assert struct.unpack("=IIIIHHI", message[16:]) == (1, 1, 0, 9, 4, 0, 1)


@pytest.mark.parametrize("status, code", [(0, 0), (1 << 8, 1), (255 << 8, 255), (9, -9), (0x80 | 11, -11)])
def test_exit_status_becomes_exit_code_or_minus_signal(status: int, code: int) -> None:
    assert exit_status_code(status) == code


def test_cmdline_padding_left_by_a_rewritten_title_is_not_arguments() -> None:
    from actors.hostfs.procfs import parse_cmdline

    assert parse_cmdline(b"hostaudit: supervisor" + b"\0" * 40) == ("hostaudit: supervisor",)
    assert parse_cmdline(b"ls\0-l\0\0x\0") == ("ls", "-l", "", "x")
    assert parse_cmdline(b"") == ()


class _HealthyConnector:
    """Stands in for an open ProcConnector: only lost() is asked by a poll."""

    def __init__(self) -> None:
        self.dropped = 0

    def lost(self) -> int:
        return self.dropped


def test_with_a_healthy_connector_a_poll_reads_only_new_pids_until_the_full_pass(host: Path, monkeypatch) -> None:
    add_process(host, 2700, comm="kept", ticks=1_000)
    add_process(host, 2701, comm="zombie", state="Z")
    ds = dataset(host)
    ds._connector = connector = _HealthyConnector()  # what open_stream keeps
    ds._streaming = True
    first = ds.observe()
    read: list[str] = []
    real_read_stat = process_dataset.read_stat
    monkeypatch.setattr(process_dataset, "read_stat", lambda path: read.append(path.rsplit("/", 1)[1])
                        or real_read_stat(path))
    add_process(host, 2702, comm="new", ticks=2_000)
    # A new name is seen only by a full pass (the connector reports execs).
    add_process(host, 2700, comm="renamed", ticks=1_000, skip=("exe", "cwd"))
    second = ds.observe()
    assert read == ["2702"], "the known process and the zombie are not read again"
    assert second["processes"]["2700"] is first["processes"]["2700"] and "2702" in second["processes"]
    assert "2701" not in second["processes"]
    connector.dropped = 1  # notifications lost: the next poll reads everything again
    third = ds.observe()
    assert sorted(read[1:]) == ["2700", "2701", "2702"] and third["processes"]["2700"]["name"] == "renamed"
    read.clear()
    ds.observe()
    assert read == []
    monkeypatch.setattr(process_dataset, "FULL_PASS_SECONDS", 0.0)
    ds.observe()
    assert sorted(read) == ["2700", "2701", "2702"], "a full pass at least every FULL_PASS_SECONDS"
