"""The `_bulk` client: plain HTTP with urllib3, which Elasticsearch and OpenSearch both answer alike (no
product check, no `compatible-with` media type), writing `create` actions and reading back each item's status."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import urllib3
from urllib3.exceptions import HTTPError

from actors.indexer.settings import EngineSettings

log = logging.getLogger("hostaudit.indexer.bulk")

# Only what the outcome needs: `errors`, and per item its status and, when refused, its error.
FILTER = "filter_path=errors,items.*.status,items.*.error"
CREATED, DUPLICATE, BAD_DOCUMENT, TOO_MANY = 201, 409, 400, 429


class EngineUnavailable(Exception):
    """The request as a whole failed in a way that may pass: unreachable, timeout, 429, 5xx, or an answer
    that is not a bulk response (a proxy's error page, 401/403 while credentials are being fixed)."""


class RequestRefused(Exception):
    """The engine refused the whole request for what it holds (400 or 413): retrying it unchanged cannot help;
    the caller splits it to find the document at fault. `status` is the HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One document's outcome: its HTTP status, and for a refusal the engine's error in one line."""

    status: int
    error: str = ""


def action_line(index: str, document_id: str) -> bytes:
    """The `create` action of one document."""
    return b'{"create":{"_index":%s,"_id":%s}}\n' % (json.dumps(index).encode(), json.dumps(document_id).encode())


def describe_item_error(error: Any) -> str:
    """One line from a bulk item's `error` ({type, reason, caused_by...}), innermost cause included."""
    if not isinstance(error, dict):
        return " ".join(str(error).split())[:1000]
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict):
        text += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    return " ".join(text.split())[:1000]


def _authorization(engine: EngineSettings) -> dict[str, str]:
    if engine.api_key is not None:
        key = engine.api_key.reveal()
        encoded = base64.b64encode(key.encode()).decode() if ":" in key else key  # Beats: id:api_key
        return {"Authorization": f"ApiKey {encoded}"}
    if engine.username is not None and engine.password is not None:
        credentials = f"{engine.username}:{engine.password.reveal()}".encode()
        return {"Authorization": f"Basic {base64.b64encode(credentials).decode()}"}
    return {}


def _pool(engine: EngineSettings) -> urllib3.PoolManager:
    timeout = urllib3.Timeout(connect=min(10.0, engine.timeout), read=engine.timeout)
    tls = engine.ssl
    if not tls.get("enabled"):
        return urllib3.PoolManager(num_pools=len(engine.hosts), maxsize=1, timeout=timeout, retries=False)
    from actors.outputs.kafka import ssl_context  # one TLS setup for every output (verification modes, mTLS)

    mode = tls.get("verification_mode", "full")
    return urllib3.PoolManager(num_pools=len(engine.hosts), maxsize=1, timeout=timeout, retries=False,
                               ssl_context=ssl_context(tls), cert_reqs="CERT_NONE" if mode == "none" else None,
                               assert_hostname=False if mode in ("certificate", "none") else None)


def _short(body: bytes) -> str:
    """The engine's reason for refusing a request, in one line, from its JSON error (or the body's start)."""
    try:
        error = json.loads(body).get("error")
        if error:
            return describe_item_error(error)
    except (ValueError, AttributeError):
        pass
    return " ".join(body[:300].decode("utf-8", "replace").split()) or "(empty answer)"


class BulkClient:
    """Sends `_bulk` bodies to the configured hosts in turn; after a failure the next request goes to the next
    host. Never retries by itself: the bulk writer decides (and counts) every retry."""

    def __init__(self, engine: EngineSettings) -> None:
        self.hosts = engine.hosts
        self._pool = _pool(engine)
        self._headers = {"Content-Type": "application/x-ndjson", "Accept": "application/json",
                         **_authorization(engine)}
        self._next = 0

    @property
    def host(self) -> str:
        return self.hosts[self._next % len(self.hosts)]

    def _failed(self) -> None:
        self._next += 1

    def bulk(self, body: bytes, count: int) -> Sequence[ItemResult]:
        """POST one `_bulk` body of `count` actions; each action's result, in order.

        Raises EngineUnavailable (retry later) or RequestRefused (the body itself is refused)."""
        host = self.host
        try:
            response = self._pool.request("POST", f"{host}/_bulk?{FILTER}", body=body, headers=self._headers,
                                          preload_content=True, redirect=False)
        except HTTPError as error:
            self._failed()
            reason = getattr(error, "reason", None) or error
            raise EngineUnavailable(f"{host}: {type(reason).__name__}: {str(reason).split(': ')[-1]}") from None
        status, data = response.status, response.data
        if status in (400, 413):
            raise RequestRefused(status, f"{host}: HTTP {status}: {_short(data)}")
        if status != 200:
            self._failed()
            raise EngineUnavailable(f"{host}: HTTP {status}: {_short(data)}")
        try:
            answer = json.loads(data)
            if not answer.get("errors"):
                if len(answer.get("items", ())) != count:
                    raise ValueError("item count")
                return [ItemResult(CREATED)] * count
            items = answer["items"]
            if len(items) != count:
                raise ValueError("item count")
            results = []
            for item in items:
                (outcome,) = item.values()
                status = int(outcome["status"])
                results.append(ItemResult(status, describe_item_error(outcome["error"]) if status >= 300 else ""))
            return results
        except (ValueError, KeyError, TypeError, AttributeError):
            self._failed()
            raise EngineUnavailable(f"{host}: HTTP 200 without a bulk response for {count} documents: "
                                    f"{_short(data)}") from None

    def close(self) -> None:
        self._pool.clear()
