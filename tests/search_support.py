"""Real OpenSearch nodes for tests (ops/opensearch/node.py) and the few HTTP calls the tests make to them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ops" / "opensearch"))
from node import OpenSearchNode, SearchNodeError, http_json  # noqa: E402

__all__ = ["OpenSearchNode", "SearchNodeError", "http_json", "bulk_create"]


def bulk_create(url: str, index: str, docs: Iterable[tuple[str, Mapping[str, Any]]],
                refresh: bool = True) -> dict[str, Any]:
    """One _bulk request of `create` actions with explicit _id into index (or data stream); returns the response."""
    lines: list[str] = []
    for doc_id, doc in docs:
        lines.append(json.dumps({"create": {"_index": index, "_id": doc_id}}))
        lines.append(json.dumps(doc))
    status, body = http_json(f"{url}/_bulk" + ("?refresh=true" if refresh else ""), "POST",
                             "\n".join(lines) + "\n", content_type="application/x-ndjson")
    assert status == 200 and isinstance(body, dict), f"_bulk answered {status}: {str(body)[:500]}"
    return body
