"""Executable hashing for the process dataset: Auditbeat's hash types, a file-identity cache, a scan-rate limit,
and a background thread that does the hashing."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Mapping, Protocol, Sequence

import xxhash

from actors.hostfs.outcome import vanished

if TYPE_CHECKING:
    from actors.datasets.process.options import HashOptions

# Auditbeat's hasher (auditbeat/helper/hasher/hasher.go), in its order.
HASH_TYPES: tuple[str, ...] = (
    "blake2b_256", "blake2b_384", "blake2b_512", "md5", "sha1", "sha224", "sha256", "sha384", "sha512",
    "sha512_224", "sha512_256", "sha3_224", "sha3_256", "sha3_384", "sha3_512", "xxh64",
)
# The types ECS 9.4 has a `process.hash.<type>` field for; the others go under `system.audit.process.hash.*`.
ECS_HASH_TYPES = frozenset({"md5", "sha1", "sha256", "sha384", "sha512"})

DEFAULT_CACHE_ENTRIES = 4096
DEFAULT_MAX_JOBS = 4096  # files waiting for the hashing thread
CHUNK_BYTES = 1024 * 1024
LOG = logging.getLogger("hostaudit.process")

# (st_dev, st_ino, st_size, st_mtime_ns): the same values mean the same file content, for caching.
FileId = tuple[int, int, int, int]


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_digest(hash_type: str) -> Digest:
    """Return a fresh digest object for one of HASH_TYPES. xxh64 (seed 0) is the xxhash package's: its
    `hexdigest()` is the big-endian hex Go's cespare/xxhash `Sum` gives, as Auditbeat reports it."""
    if hash_type.startswith("blake2b_"):
        return hashlib.blake2b(digest_size=int(hash_type.split("_")[1]) // 8)
    if hash_type == "xxh64":
        return xxhash.xxh64()
    return hashlib.new(hash_type)


# ---------------------------------------------------------------------------------------------------------
# Rate limit and hashing
# ---------------------------------------------------------------------------------------------------------

class TokenBucket:
    """golang.org/x/time/rate's limiter as Auditbeat uses it: `rate` tokens (bytes) a second, `burst` at most,
    starting full. `take(n)` sleeps until n tokens are there (n must not exceed the burst)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()

    def take(self, amount: int) -> float:
        """Wait until `amount` tokens are available and spend them; return the seconds waited."""
        if amount > self.burst:
            raise ValueError(f"cannot take {amount} tokens from a bucket of {self.burst:.0f}")
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= amount
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate  # the debt is paid by time; later callers see a negative balance
        self._sleep(wait)
        return wait

    def delay(self, amount: int) -> float:
        """Seconds until `amount` tokens are there (0 when they are now); spends nothing, so a caller can wait
        for them while still free to serve a smaller demand first."""
        tokens = min(self.burst, self._tokens + (self._clock() - self._updated) * self.rate)
        return 0.0 if tokens >= amount else (amount - tokens) / self.rate


@dataclass(frozen=True)
class HashResult:
    """The digests of one file (type -> lower-case hex), or why there are none (Auditbeat's wording)."""

    digests: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


def file_id(status: os.stat_result) -> FileId:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class FileHashing:
    """One open file being hashed a chunk at a time, so that a large file can give way to small ones."""

    def __init__(self, identity: FileId, handle: BinaryIO, hash_types: Sequence[str]) -> None:
        self.identity = identity
        self.remaining = identity[2]  # bytes still to read, by the size the file had when opened
        self._handle = handle
        self._digests = {name: new_digest(name) for name in hash_types}

    def step(self, bucket: TokenBucket) -> HashResult | None:
        """Read and digest the next chunk (waiting for the scan rate's tokens first); the result once the file is
        read (the file is then closed), None while there is more."""
        if self.remaining > 0:
            bucket.take(min(self.remaining, CHUNK_BYTES))
        try:
            chunk = self._handle.read(CHUNK_BYTES)
        except OSError as error:
            self.close()
            return HashResult(error=f"hasher: {error.strerror or error}")
        if not chunk:
            self.close()
            return HashResult(digests={name: digest.hexdigest() for name, digest in self._digests.items()})
        for digest in self._digests.values():
            digest.update(chunk)
        self.remaining -= len(chunk)
        return None

    def close(self) -> None:
        self._handle.close()


class ExecutableHasher:
    """Hashes each distinct executable once: results are cached by FileId (LRU, bounded). The cache may be used
    from several threads; the hashing itself (`start`, then `FileHashing.step` until done, then `finish`) from
    one thread at a time, which owns the token bucket."""

    def __init__(self, options: HashOptions, cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 bucket: TokenBucket | None = None) -> None:
        self.options = options
        self.bucket = bucket or TokenBucket(options.scan_rate_per_sec, options.max_file_size)
        self._cache: OrderedDict[FileId, HashResult] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        self.files_hashed = 0

    def cached(self, identity: FileId) -> HashResult | None:
        with self._lock:
            result = self._cache.get(identity)
            if result is not None:
                self._cache.move_to_end(identity)
            return result

    def hash_path(self, path: str, expected: FileId | None = None) -> HashResult | None:
        """Hash the file at `path` now (e.g. /proc/PID/exe, which opens the very executable even in another mount
        namespace or when deleted). None when it is gone, or is not the file `expected` names."""
        started = self.start(path, expected)
        if not isinstance(started, FileHashing):
            return started
        while (result := started.step(self.bucket)) is None:
            pass
        self.finish(started, result)
        return result

    def start(self, path: str, expected: FileId | None = None) -> FileHashing | HashResult | None:
        """Open `path` for hashing: None when it is gone or is not the file `expected` names; a HashResult when it
        is known already (cached) or cannot be hashed (unreadable, not a regular file, over max_file_size); else
        the FileHashing to step through, which owns the open file."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as error:
            if vanished(error):  # no such file, or the process is gone
                return None
            return HashResult(error=f"hasher: {error.strerror or error}")
        try:
            status = os.fstat(descriptor)
            identity = file_id(status)
            if expected is not None and identity != expected:
                os.close(descriptor)
                return None
            if (result := self.cached(identity)) is not None:
                os.close(descriptor)
                return result
            if not stat.S_ISREG(status.st_mode):
                result = HashResult(error="hasher: not a regular file")
            elif status.st_size > self.options.max_file_size:
                result = HashResult(error=f"hasher: file size {status.st_size} exceeds max file size")
            else:
                return FileHashing(identity, os.fdopen(descriptor, "rb", buffering=0), self.options.hash_types)
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)
        self._remember(identity, result)
        return result

    def finish(self, hashing: FileHashing, result: HashResult) -> None:
        """Cache the result of a FileHashing that is done."""
        if result.digests:
            self.files_hashed += 1
        self._remember(hashing.identity, result)

    def _remember(self, identity: FileId, result: HashResult) -> None:
        with self._lock:
            self._cache[identity] = result
            self._cache.move_to_end(identity)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)


# ---------------------------------------------------------------------------------------------------------
# Hashing off the caller's thread
# ---------------------------------------------------------------------------------------------------------

class HashJob:
    """A request to hash one executable (by identity) through the first of `paths` that is still that file.
    `done` and `result` are set by the hashing thread; `result` stays None when no path led to the file."""

    __slots__ = ("identity", "paths", "done", "result", "waited_out")

    def __init__(self, identity: FileId, paths: Sequence[str], result: HashResult | None = None,
                 done: bool = False) -> None:
        self.identity = identity
        self.paths = tuple(paths)
        self.done = done
        self.result = result
        self.waited_out = False  # a caller already waited its whole budget for it: later callers do not wait


class BackgroundHasher:
    """Hashes executables in one background thread, so that a large file never holds up the dataset's actor.

    Requests for the same file share one job; finished results go to the ExecutableHasher's cache. The thread
    works a chunk at a time on the job with the fewest bytes left, and waits for the scan rate's tokens of a
    chunk before taking them, so small executables are hashed at once even while a large one is under way or
    throttled. At most `max_jobs` files wait; a request beyond that is refused.
    The thread starts with the first request (not at import: the collector is forked from a forkserver)."""

    def __init__(self, hasher: ExecutableHasher, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        self.hasher = hasher
        self.max_jobs = max_jobs
        self._condition = threading.Condition()
        self._jobs: dict[FileId, HashJob] = {}  # unfinished, by identity
        self._ready: list[tuple[int, int, HashJob]] = []  # heap of (bytes left, order, job)
        self._working: dict[int, FileHashing] = {}  # id(job) -> its open file, once started
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.bytes_hashed = 0  # read and digested so far, by the hashing thread

    def request(self, identity: FileId, paths: Sequence[str]) -> HashJob | None:
        """The job hashing this file: a finished one when its result is cached, the unfinished one when the file
        is asked for already, else a new one; None when `max_jobs` files wait already."""
        if (cached := self.hasher.cached(identity)) is not None:
            return HashJob(identity, paths, cached, done=True)
        with self._condition:
            if (job := self._jobs.get(identity)) is not None:
                return job
            if len(self._jobs) >= self.max_jobs or self._closed:
                return None
            job = self._jobs[identity] = HashJob(identity, paths)
            heapq.heappush(self._ready, (identity[2], next(self._order), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="process-hasher", daemon=True)
                self._thread.start()
            self._condition.notify_all()
            return job

    def wait(self, jobs: Iterable[HashJob], timeout: float) -> bool:
        """Wait up to `timeout` seconds until every job is done; True when they are."""
        pending = [job for job in jobs if not job.done]
        if not pending:
            return True
        with self._condition:
            return self._condition.wait_for(lambda: all(job.done for job in pending), max(0.0, timeout))

    def pending(self) -> int:
        """How many files wait to be hashed, or are being hashed."""
        with self._condition:
            return len(self._jobs)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (an unfinished file is left unhashed) and close the files it had open."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._ready or self._closed)
                if self._closed:
                    for hashing in self._working.values():
                        hashing.close()
                    self._working.clear()
                    return
                remaining = self._ready[0][0]
                bucket = self.hasher.bucket
                wait = bucket.delay(min(max(remaining, 1), CHUNK_BYTES, int(bucket.burst)))
                if wait > 0:  # the scan rate: wait for the tokens of its next chunk, or for a smaller file
                    self._condition.wait(wait)
                    continue
                _, _, job = heapq.heappop(self._ready)
                hashing = self._working.pop(id(job), None)
            try:
                hashing, result = self._step(job, hashing)
            except Exception as error:  # noqa: BLE001 - one file must not end the hashing of every other
                LOG.exception("process: hashing %s failed", job.paths[0] if job.paths else job.identity)
                if hashing is not None:
                    hashing.close()
                hashing, result = None, HashResult(error=f"hasher: {error}")
            with self._condition:
                if hashing is not None:  # more to read: back in line by the bytes it has left
                    self._working[id(job)] = hashing
                    heapq.heappush(self._ready, (hashing.remaining, next(self._order), job))
                    continue
                job.result, job.done = result, True
                del self._jobs[job.identity]
                self._condition.notify_all()

    def _step(self, job: HashJob, hashing: FileHashing | None) -> tuple[FileHashing | None, HashResult | None]:
        """One step of a job: open its file if not yet (through the first path that is still that file), then
        hash one chunk. Returns (its FileHashing, None) while there is more to read, else (None, its result)."""
        if hashing is None:
            started = next((opened for path in job.paths
                            if (opened := self.hasher.start(path, expected=job.identity)) is not None), None)
            if not isinstance(started, FileHashing):
                return None, started  # a result known at once, or None: gone by every path (no hash, no error)
            hashing = started
        remaining = hashing.remaining
        result = hashing.step(self.hasher.bucket)
        self.bytes_hashed += max(0, remaining - hashing.remaining)
        if result is None:
            return hashing, None
        self.hasher.finish(hashing, result)
        return None, result
