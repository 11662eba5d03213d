"""An HTTP server that answers `_bulk` as a test tells it, to inject what a real engine cannot be made to do on
demand (429 for some items, 413, a proxy's 502, an answer that is not JSON). Everything else is tested against
the real OpenSearch."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# A rule gets the request's documents as [(action, source)] and returns (HTTP status, body) or, for a
# bulk answer, (200, [item status, ...]).
Rule = Callable[[list[tuple[dict[str, Any], bytes]]], tuple[int, Any]]


def accept_all(documents: list[tuple[dict[str, Any], bytes]]) -> tuple[int, Any]:
    return 200, [201] * len(documents)


class ScriptedEngine:
    """`rules` answer the requests in turn (the last one answers every request after); `requests` keeps each
    request's documents and headers."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = list(rules) or [accept_all]
        self.requests: list[tuple[list[tuple[dict[str, Any], bytes]], dict[str, str]]] = []
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                lines = body.split(b"\n")
                documents = [(json.loads(lines[index]), lines[index + 1]) for index in range(0, len(lines) - 1, 2)]
                with engine._lock:
                    engine.requests.append((documents, dict(self.headers)))
                    rule = engine.rules.pop(0) if len(engine.rules) > 1 else engine.rules[0]
                status, answer = rule(documents)
                if isinstance(answer, list):
                    items = [{"create": {"status": item} if item < 300 else
                              {"status": item, "error": {"type": f"error_{item}", "reason": f"refused {item}"}}}
                             for item in answer]
                    answer = {"errors": any(item >= 300 for item in answer), "items": items}
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self, request: int) -> list[str]:
        return [action["create"]["_id"] for action, _ in self.requests[request][0]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
