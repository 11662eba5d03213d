"""Who this agent is: its persisted agent.id, the per-run ephemeral id, and the fields every event carries."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from actors import __version__
from actors.event import ECS_VERSION
from actors.state import ensure_private_dir

AGENT_TYPE = "hostaudit"


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
    """Read agent.id from `<path.data>/agent.json`, creating it (0600) on first start."""
    ensure_private_dir(path_data)
    meta_path = path_data / "agent.json"
    try:
        agent_id = str(uuid.UUID(json.loads(meta_path.read_text())["id"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        agent_id = str(uuid.uuid4())
        _write_private(meta_path, json.dumps({"id": agent_id}).encode())
    return AgentIdentity(id=agent_id, ephemeral_id=str(uuid.uuid4()), name=socket.gethostname())


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_digest_key(path_data: Path) -> bytes:
    """The per-install key for keyed digests of secrets (e.g. shadow hashes), `<path.data>/digest.key`, 0600."""
    ensure_private_dir(path_data)
    key_path = path_data / "digest.key"
    try:
        key = key_path.read_bytes()
        if key:
            return key
    except FileNotFoundError:
        pass  # first start: create it below
    # Create it only if absent (link fails when another process got there first), so concurrent first
    # starts agree on one key.
    temporary = path_data / f".digest.key.{os.getpid()}.tmp"
    _write_private(temporary, os.urandom(32))
    try:
        os.link(temporary, key_path)
    except FileExistsError:
        pass  # another process created it: use theirs
    finally:
        temporary.unlink()
    return key_path.read_bytes()


def common_fields(agent: AgentIdentity, host: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every event carries besides its dataset's own: agent, host, ecs, service."""
    return {"agent": agent.fields(), "ecs": {"version": ECS_VERSION}, "service": {"type": "system"},
            "host": dict(host)}
