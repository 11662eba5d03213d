"""The test search engine (ops/opensearch): a real OpenSearch node that dedupes `create` by _id, started and stopped by its scripts."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from tests.agent_harness import REPO
from tests.search_support import bulk_create, http_json

OPS = REPO / "ops" / "opensearch"


def script(name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(OPS / name), *args], capture_output=True, text=True, timeout=timeout)


def statuses(response: dict) -> list[int]:
    return [item["create"]["status"] for item in response["items"]]


def test_bulk_create_with_an_id_is_201_then_409_for_that_item_only(search_url: str) -> None:
    index = f"node-test-{uuid.uuid4().hex[:8]}"
    first = bulk_create(search_url, index, [("a", {"n": 1}), ("b", {"n": 2})])
    assert (first["errors"], statuses(first)) == (False, [201, 201])

    again = bulk_create(search_url, index, [("a", {"n": 99}), ("c", {"n": 3})])
    assert again["errors"] is True and statuses(again) == [409, 201]
    assert again["items"][0]["create"]["error"]["type"] == "version_conflict_engine_exception"

    status, count = http_json(f"{search_url}/{index}/_count")
    assert status == 200 and count["count"] == 3
    status, doc = http_json(f"{search_url}/{index}/_doc/a")
    assert status == 200 and doc["_source"] == {"n": 1}  # the duplicate did not overwrite the first


def test_start_sh_prints_the_url_stop_sh_stops_and_a_restart_keeps_the_data(tmp_path: Path) -> None:
    workdir = tmp_path / "node"
    try:
        started = script("start.sh", "--workdir", str(workdir))
        assert started.returncode == 0, started.stderr
        match = re.fullmatch(r"(http://127\.0\.0\.1:(\d+))\n", started.stdout)
        assert match, started.stdout
        url = match.group(1)
        status, info = http_json(url)
        assert status == 200 and info["version"]["number"].startswith("2.19.")
        assert statuses(bulk_create(url, "kept", [("x", {"v": 1})])) == [201]
        pid = int((workdir / "node.pid").read_text())

        assert script("stop.sh", "--workdir", str(workdir)).returncode == 0
        assert not Path(f"/proc/{pid}").exists() or b"OneNode" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        status_cmd = [sys.executable, str(OPS / "node.py"), "status", "--workdir", str(workdir)]
        assert subprocess.run(status_cmd, capture_output=True, timeout=60).returncode == 3

        restarted = script("start.sh", "--workdir", str(workdir))
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip() == url  # same port, same data
        assert statuses(bulk_create(url, "kept", [("x", {"v": 2})])) == [409]
    finally:
        script("stop.sh", "--workdir", str(workdir))


def test_a_port_in_use_fails_the_start_at_once_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = script("start.sh", "--workdir", str(tmp_path / "node"), "--port", str(port))
    assert result.returncode == 1
    first_line = result.stderr.splitlines()[0]
    assert "exited with code 1 during startup" in first_line
    assert f"BindHttpException[Failed to bind to 127.0.0.1:{port}]" in first_line
