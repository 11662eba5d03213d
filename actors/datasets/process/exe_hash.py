"""Executable hashing for the process dataset: Auditbeat's hash types, a file-identity cache and a scan-rate limit."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import xxhash

from actors.hostfs.outcome import vanished
from actors.options import ConfigError, parse_size

# Auditbeat's hasher (auditbeat/helper/hasher/hasher.go), in its order.
HASH_TYPES: tuple[str, ...] = (
    "blake2b_256", "blake2b_384", "blake2b_512", "md5", "sha1", "sha224", "sha256", "sha384", "sha512",
    "sha512_224", "sha512_256", "sha3_224", "sha3_256", "sha3_384", "sha3_512", "xxh64",
)
# The types ECS 9.4 has a `process.hash.<type>` field for; the others go under `system.audit.process.hash.*`.
ECS_HASH_TYPES = frozenset({"md5", "sha1", "sha256", "sha384", "sha512"})

DEFAULT_HASH_TYPES: tuple[str, ...] = ("sha1",)
DEFAULT_MAX_FILE_SIZE = 100 * 1024 * 1024  # "100 MiB"
DEFAULT_SCAN_RATE = 50 * 1024 * 1024  # "50 MiB" per second
DEFAULT_CACHE_ENTRIES = 4096
CHUNK_BYTES = 1024 * 1024

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
# Options
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HashOptions:
    """`process.hash.*`: which digests to compute, the largest file hashed, and the read rate limit."""

    enabled: bool = True
    hash_types: tuple[str, ...] = DEFAULT_HASH_TYPES
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    scan_rate_per_sec: int = DEFAULT_SCAN_RATE


def hash_options(raw: Mapping[str, Any] | None, where: str = "process.hash") -> HashOptions:
    """Read `process.hash.*` (sizes as "100 MiB" or bytes); raise ConfigError naming the setting when wrong."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping (hash_types, max_file_size, scan_rate_per_sec, enabled)")
    known = {"enabled", "hash_types", "max_file_size", "scan_rate_per_sec"}
    if unknown := sorted(set(raw) - known):
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: expected true or false, got {enabled!r}")
    types = raw.get("hash_types", DEFAULT_HASH_TYPES)
    if isinstance(types, str) or not isinstance(types, (list, tuple)):
        raise ConfigError(f"{where}.hash_types: expected a list such as [sha1, sha256], got {types!r}")
    lowered = tuple(dict.fromkeys(str(name).lower() for name in types))
    if unknown := [name for name in lowered if name not in HASH_TYPES]:
        raise ConfigError(f"{where}.hash_types: unknown hash type(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(HASH_TYPES)})")
    return HashOptions(
        enabled=enabled,
        hash_types=lowered,
        max_file_size=_size(f"{where}.max_file_size", raw.get("max_file_size", DEFAULT_MAX_FILE_SIZE)),
        scan_rate_per_sec=_size(f"{where}.scan_rate_per_sec", raw.get("scan_rate_per_sec", DEFAULT_SCAN_RATE)),
    )


def _size(setting: str, value: Any) -> int:
    try:
        size = parse_size(value)
    except ConfigError as error:
        raise ConfigError(f"{setting}: {error}") from None
    if size <= 0:
        raise ConfigError(f"{setting}: must be more than 0 bytes, got {value!r}")
    return size


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
        except OSError as error:
            if vanished(error):  # no such file, or the process is gone
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
