"""Real Auditbeat 7.17.29 as a benchmark peer: built once from the Go module proxy, cached, started and stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sessions import stop_session  # ops/bench/sessions.py

VERSION = "7.17.29"
MODULE = "github.com/elastic/beats/v7"
CACHE = Path.home() / ".cache" / "hostaudit" / f"auditbeat-{VERSION}"
BINARY = CACHE / "auditbeat"
RPM_HEADER = Path("/usr/include/rpm/rpmlib.h")  # the package dataset links librpm

MAIN_GO = """package main

import (
	"os"

	"github.com/elastic/beats/v7/x-pack/auditbeat/cmd"

	_ "github.com/elastic/beats/v7/auditbeat/include"
	_ "github.com/elastic/beats/v7/auditbeat/module/auditd"
	_ "github.com/elastic/beats/v7/auditbeat/module/file_integrity"
)

func main() {
	if err := cmd.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}
"""


class Unavailable(Exception):
    """Auditbeat cannot be built or run here; the message says why."""


def go_directives(go_mod: str, keyword: str) -> list[str]:
    """The `replace` (or `exclude`) directives of a go.mod, single lines and blocks, as written."""
    kept: list[str] = []
    in_block = False
    for line in go_mod.splitlines():
        stripped = line.strip()
        if in_block:
            kept.append(line)
            in_block = stripped != ")"
        elif stripped.startswith(f"{keyword} ("):
            kept.append(line)
            in_block = True
        elif stripped.startswith(f"{keyword} "):
            kept.append(line)
    return kept


def run_go(arguments: list[str], directory: Path) -> str:
    environment = {**os.environ, "GOFLAGS": "-mod=mod"}
    result = subprocess.run(["go", *arguments], cwd=directory, env=environment, capture_output=True, text=True)
    if result.returncode:
        raise Unavailable(f"`go {' '.join(arguments)}` failed in {directory}:\n{result.stderr[-3000:]}")
    return result.stdout


def build() -> Path:
    """The cached Auditbeat binary; builds it first when missing (minutes the first time: it downloads beats)."""
    if BINARY.exists():
        return BINARY
    if shutil.which("go") is None:
        raise Unavailable("Go is not installed (`go` is not on PATH)")
    if not RPM_HEADER.exists():
        raise Unavailable(f"{RPM_HEADER} is missing: run `apt-get install -y librpm-dev` (Auditbeat's package "
                          "dataset links librpm)")
    print(f"Building Auditbeat {VERSION} into {CACHE} (a few minutes the first time: it downloads beats and its "
          "dependencies from the Go module proxy) ...", file=sys.stderr, flush=True)
    source = CACHE / "src"
    source.mkdir(parents=True, exist_ok=True)
    if not (source / "go.mod").exists():
        run_go(["mod", "init", "peer"], source)
    beats = Path(json.loads(run_go(["mod", "download", "-json", f"{MODULE}@v{VERSION}"], source))["Dir"])
    beats_mod = (beats / "go.mod").read_text()
    directives = go_directives(beats_mod, "replace") + go_directives(beats_mod, "exclude")
    go_line = next((line for line in beats_mod.splitlines() if line.startswith("go ")), "go 1.17")
    (source / "go.mod").write_text(f"module peer\n\n{go_line}\n\nrequire {MODULE} v{VERSION}\n\n"
                                   + "\n".join(directives) + "\n")
    (source / "main.go").write_text(MAIN_GO)
    shutil.copyfile(beats / "x-pack" / "auditbeat" / "seccomp_linux.go", source / "seccomp_linux.go")
    run_go(["build", "-o", str(BINARY.with_suffix(".tmp")), "."], source)
    BINARY.with_suffix(".tmp").rename(BINARY)
    print(f"Built {BINARY}", file=sys.stderr, flush=True)
    return BINARY


class Auditbeat:
    """`auditbeat -e -c auditbeat.yml` in `workdir`, events to `workdir/out/auditbeat*.ndjson`."""

    def __init__(self, binary: Path, workdir: Path, modules_yaml: str) -> None:
        self.workdir = workdir
        self.output_dir = workdir / "out"
        self.log_path = workdir / "auditbeat.log"
        config = workdir / "auditbeat.yml"
        config.write_text(f"auditbeat.modules:\n{modules_yaml}\n"
                          "output.file:\n"
                          f"  path: {self.output_dir}\n"
                          "  filename: auditbeat\n"
                          "  rotate_every_kb: 4194304\n"
                          "logging.level: info\n")
        config.chmod(0o600)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(binary), "-e", "-c", str(config), "--path.home", str(workdir), "--strict.perms=false",
             "-E", "max_start_delay=0"],
            cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def output_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        for path in sorted(self.output_dir.glob("auditbeat*")):
            lines.extend(line for line in path.read_bytes().splitlines() if line)
        return lines

    def stop(self) -> int | None:
        """SIGTERM (the auditd module deletes its audit rules on the way out), SIGKILL if it lingers."""
        code = stop_session(self.process, 20)
        self._log.close()
        return code
