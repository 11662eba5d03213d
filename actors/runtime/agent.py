"""Who this agent is: its persisted agent.id, the per-run ephemeral id, and the fields every event carries."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from actors import __version__
from actors.event import ECS_VERSION
from actors.runtime.state import ensure_private_dir

AGENT_TYPE = "hostaudit"
DIGEST_KEY_BYTES = 32  # a new digest.key
MIN_DIGEST_KEY_BYTES = 16  # a shorter one (an empty file) is replaced

log = logging.getLogger("hostaudit.agent")
_T = TypeVar("_T")


@dataclass(frozen=True)
class AgentIdentity:
    """The `agent.*` fields: a UUID kept in path.data across restarts, and one new per run."""

    id: str
    ephemeral_id: str
    version: str = __version__
    name: str = ""

    def fields(self) -> dict[str, Any]:
        agent = {"type": AGENT_TYPE, "version": self.version, "id": self.id, "ephemeral_id": self.ephemeral_id}
        if self.name:
            agent["name"] = self.name
        return agent


def load_agent_identity(path_data: Path) -> AgentIdentity:
    """Read agent.id from `<path.data>/agent.json`, creating it (0600) on first start.

    A file that cannot be read or holds no valid id is moved aside (`agent.json.corrupt-<unix time>`) with one
    warning, and a new id is created. Creation is create-if-absent (a hard link), so concurrent first starts
    agree on one id.
    """
    ensure_private_dir(path_data)
    meta_path = path_data / "agent.json"
    try:
        agent_id = _read_agent_id(meta_path)
    except FileNotFoundError:
        agent_id = None
    except (OSError, ValueError) as error:
        agent_id = _repair(path_data, meta_path, _read_agent_id, error, "holds no valid agent id",
                           "a new agent.id is created")
    if agent_id is None:
        _create_if_absent(path_data, meta_path, json.dumps({"id": str(uuid.uuid4())}).encode())
        agent_id = _read_agent_id(meta_path)
    return AgentIdentity(id=agent_id, ephemeral_id=str(uuid.uuid4()), name=socket.gethostname())


def _read_agent_id(path: Path) -> str:
    """The id in agent.json; ValueError when the file is not {"id": "<uuid>"}, OSError when unreadable."""
    try:
        return str(uuid.UUID(json.loads(path.read_bytes())["id"]))
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not {{\"id\": \"<uuid>\"}} ({type(error).__name__})") from None


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _create_if_absent(path_data: Path, path: Path, data: bytes) -> None:
    """Create `path` (0600) holding `data` unless it exists: a hard link fails when another process got there
    first, so concurrent first starts agree on one file (theirs)."""
    temporary = path_data / f".{path.name}.{os.getpid()}.new"
    _write_private(temporary, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process created it: use theirs
    finally:
        temporary.unlink()


@contextlib.contextmanager
def _identity_lock(path_data: Path) -> Iterator[None]:
    """Serialise repairs of agent.json / digest.key between processes starting at the same time."""
    descriptor = os.open(path_data / ".identity.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _repair(path_data: Path, path: Path, read: Callable[[Path], _T], error: Exception, problem: str,
            remedy: str) -> _T | None:
    """Move a bad identity file aside with one warning; return None for the caller to create a new one, or
    what `read` returns if another process repaired it meanwhile."""
    with _identity_lock(path_data):
        try:
            return read(path)  # another process may have replaced it while this one waited
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{os.getpid()}")
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        log.warning("%s %s (%s): moved to %s; %s", path, problem, reason, aside.name, remedy)
        os.replace(path, aside)
        return None


def _read_digest_key(path: Path) -> bytes:
    """The digest key; ValueError when it is shorter than MIN_DIGEST_KEY_BYTES (e.g. empty)."""
    key = path.read_bytes()
    if len(key) < MIN_DIGEST_KEY_BYTES:
        raise ValueError(f"{len(key)} bytes, less than {MIN_DIGEST_KEY_BYTES}")
    return key


def load_digest_key(path_data: Path) -> bytes:
    """The per-install key for keyed digests of secrets (e.g. shadow hashes), `<path.data>/digest.key`, 0600.

    An unreadable key or one shorter than 16 bytes (an empty file) is moved aside with one warning and a new
    one is created (password changes cannot be detected across that one restart).
    """
    ensure_private_dir(path_data)
    key_path = path_data / "digest.key"
    try:
        return _read_digest_key(key_path)
    except FileNotFoundError:
        pass  # first start: create it below
    except (OSError, ValueError) as error:
        key = _repair(path_data, key_path, _read_digest_key, error, "is not a usable digest key",
                      "a new key is created")
        if key is not None:
            return key
    _create_if_absent(path_data, key_path, os.urandom(DIGEST_KEY_BYTES))
    return _read_digest_key(key_path)


def common_fields(agent: AgentIdentity, host: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every event carries besides its dataset's own: agent, host, ecs, service."""
    return {"agent": agent.fields(), "ecs": {"version": ECS_VERSION}, "service": {"type": "system"},
            "host": dict(host)}
