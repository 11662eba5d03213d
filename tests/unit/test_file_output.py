"""The file output: NDJSON lines, fsynced batches, rotation by size keeping number_of_files, mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from actors.outputs import OutgoingEvent
from actors.outputs.file import FileOutput


def test_rotation_keeps_number_of_files_and_every_line_of_the_newest(tmp_path: Path) -> None:
    output = FileOutput({"path": str(tmp_path), "filename": "audit", "rotate_every_kb": 1, "number_of_files": 3,
                         "permissions": 0o600})
    lines = [f'{{"n":{index},"pad":"{"x" * 200}"}}'.encode() for index in range(30)]
    for line in lines:
        output.publish([OutgoingEvent(line)])
    output.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.ndjson", "audit.ndjson.1", "audit.ndjson.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 1024 + 300
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = b"".join((tmp_path / name).read_bytes() for name in ("audit.ndjson.2", "audit.ndjson.1", "audit.ndjson"))
    assert kept.endswith(b"\n".join(lines[-8:]) + b"\n"), "the newest lines are kept, in order"
