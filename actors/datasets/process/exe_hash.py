"""Executable hashing for the process dataset: Auditbeat's hash types, a file-identity cache and a scan-rate limit."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

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
CHUNK_BYTES = 1024 * 1024

# (st_dev, st_ino, st_size, st_mtime_ns): the same values mean the same file content, for caching.
FileId = tuple[int, int, int, int]


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


# ---------------------------------------------------------------------------------------------------------
# xxh64, in pure Python (no new dependency). Slow (a few MB/s): fine for an opt-in type with a file cache.
# ---------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)
_STRIPES = struct.Struct("<4Q")


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _MASK64
    return (_rotl(acc, 31) * _P1) & _MASK64


def _merge(acc: int, value: int) -> int:
    acc ^= _round(0, value)
    return (acc * _P1 + _P4) & _MASK64


class Xxh64:
    """Streaming XXH64 (seed 0 by default); `hexdigest()` is the big-endian hex Go's cespare/xxhash `Sum` gives."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._acc = [(seed + _P1 + _P2) & _MASK64, (seed + _P2) & _MASK64, seed & _MASK64, (seed - _P1) & _MASK64]
        self._buffer = b""
        self._length = 0

    def update(self, data: bytes, /) -> None:
        self._length += len(data)
        data = self._buffer + bytes(data)
        whole = len(data) - len(data) % 32
        v1, v2, v3, v4 = self._acc
        for l1, l2, l3, l4 in _STRIPES.iter_unpack(data[:whole]):
            v1 = (_rotl((v1 + l1 * _P2) & _MASK64, 31) * _P1) & _MASK64
            v2 = (_rotl((v2 + l2 * _P2) & _MASK64, 31) * _P1) & _MASK64
            v3 = (_rotl((v3 + l3 * _P2) & _MASK64, 31) * _P1) & _MASK64
            v4 = (_rotl((v4 + l4 * _P2) & _MASK64, 31) * _P1) & _MASK64
        self._acc = [v1, v2, v3, v4]
        self._buffer = data[whole:]

    def intdigest(self) -> int:
        v1, v2, v3, v4 = self._acc
        if self._length >= 32:
            acc = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK64
            for value in (v1, v2, v3, v4):
                acc = _merge(acc, value)
        else:
            acc = (self._seed + _P5) & _MASK64
        acc = (acc + self._length) & _MASK64
        tail, offset = self._buffer, 0
        while offset + 8 <= len(tail):
            (lane,) = struct.unpack_from("<Q", tail, offset)
            acc ^= _round(0, lane)
            acc = (_rotl(acc, 27) * _P1 + _P4) & _MASK64
            offset += 8
        if offset + 4 <= len(tail):
            (lane,) = struct.unpack_from("<I", tail, offset)
            acc ^= (lane * _P1) & _MASK64
            acc = (_rotl(acc, 23) * _P2 + _P3) & _MASK64
            offset += 4
        for byte in tail[offset:]:
            acc ^= (byte * _P5) & _MASK64
            acc = (_rotl(acc, 11) * _P1) & _MASK64
        acc ^= acc >> 33
        acc = (acc * _P2) & _MASK64
        acc ^= acc >> 29
        acc = (acc * _P3) & _MASK64
        acc ^= acc >> 32
        return acc

    def hexdigest(self) -> str:
        return f"{self.intdigest():016x}"


def new_digest(hash_type: str) -> Digest:
    """Return a fresh digest object for one of HASH_TYPES."""
    if hash_type.startswith("blake2b_"):
        return hashlib.blake2b(digest_size=int(hash_type.split("_")[1]) // 8)
    if hash_type == "xxh64":
        return Xxh64()
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


@dataclass(frozen=True)
class HashResult:
    """The digests of one file (type -> lower-case hex), or why there are none (Auditbeat's wording)."""

    digests: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


def file_id(status: os.stat_result) -> FileId:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class ExecutableHasher:
    """Hashes each distinct executable once: results are cached by FileId (LRU, bounded)."""

    def __init__(self, options: HashOptions, cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 bucket: TokenBucket | None = None) -> None:
        self.options = options
        self.bucket = bucket or TokenBucket(options.scan_rate_per_sec, options.max_file_size)
        self._cache: OrderedDict[FileId, HashResult] = OrderedDict()
        self._cache_entries = cache_entries
        self.files_hashed = 0

    def cached(self, identity: FileId) -> HashResult | None:
        result = self._cache.get(identity)
        if result is not None:
            self._cache.move_to_end(identity)
        return result

    def hash_path(self, path: str, expected: FileId | None = None) -> HashResult | None:
        """Hash the file at `path` (e.g. /proc/PID/exe, which opens the very executable even in another mount
        namespace or when deleted). None when it is gone, or is not the file `expected` names."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ESRCH:  # the process is gone
                return None
            return HashResult(error=f"hasher: {error.strerror or error}")
        with os.fdopen(descriptor, "rb", buffering=0) as handle:
            status = os.fstat(handle.fileno())
            identity = file_id(status)
            if expected is not None and identity != expected:
                return None
            if (result := self.cached(identity)) is not None:
                return result
            result = self._hash_open(handle, status)
        self._remember(identity, result)
        return result

    def _hash_open(self, handle: Any, status: os.stat_result) -> HashResult:
        if not stat.S_ISREG(status.st_mode):
            return HashResult(error="hasher: not a regular file")
        if status.st_size > self.options.max_file_size:
            return HashResult(error=f"hasher: file size {status.st_size} exceeds max file size")
        self.bucket.take(status.st_size)
        digests = {name: new_digest(name) for name in self.options.hash_types}
        try:
            while chunk := handle.read(CHUNK_BYTES):
                for digest in digests.values():
                    digest.update(chunk)
        except OSError as error:
            return HashResult(error=f"hasher: {error.strerror or error}")
        self.files_hashed += 1
        return HashResult(digests={name: digest.hexdigest() for name, digest in digests.items()})

    def _remember(self, identity: FileId, result: HashResult) -> None:
        self._cache[identity] = result
        self._cache.move_to_end(identity)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
