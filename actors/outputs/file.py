"""The file output: NDJSON files under output.file.path, rotated by size, created with mode 0600."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from actors.outputs import Outgoing, OutputError, Rejection


class FileOutput:
    """Appends events to `<path>/<filename>.ndjson`; past `rotate_every_kb` the file becomes `.1`, `.1` becomes
    `.2`, ... keeping `number_of_files` files in all. Each batch is written and fsynced before it counts."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.directory = Path(options["path"])
        self.filename = str(options.get("filename", "hostaudit"))
        self.rotate_bytes = int(options.get("rotate_every_kb", 10240)) * 1024
        self.number_of_files = max(2, int(options.get("number_of_files", 7)))
        self.permissions = int(str(options.get("permissions", "0600")), 8) if isinstance(
            options.get("permissions", "0600"), str) else int(options["permissions"])
        self.path = self.directory / f"{self.filename}.ndjson"
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.permissions)
            except OSError as error:
                raise OutputError(f"output.file.path: cannot open {self.path}: {error.strerror}") from error
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for index in range(self.number_of_files - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            newer = self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
            if newer.exists():
                os.replace(newer, older)

    def publish(self, batch: Sequence[Outgoing]) -> Sequence[Rejection]:
        data = b"".join(event.payload + b"\n" for event in batch)
        fd = self._open()
        if self._size and self._size + len(data) > self.rotate_bytes:
            self._rotate()
            fd = self._open()
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as error:
            try:
                os.ftruncate(fd, self._size)  # no torn line: the retry appends the whole batch again
            except OSError:
                pass  # reopened below; the size is measured again then
            os.close(fd)
            self._fd = None
            raise OutputError(f"output.file: cannot write {self.path}: {error.strerror}") from error
        self._size += len(data)
        return ()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
