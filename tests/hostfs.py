"""Builds synthetic host trees (a fake /etc and /proc under a hostfs root) for tests."""

from __future__ import annotations

import os
from pathlib import Path

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""


PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
GROUP = "root:x:0:\nalice:x:1000:\nadmins:x:1500:alice\n"
SHADOW_HASH = "$6$saltsaltSALT$" + "h" * 86
SHADOW = f"root:*:19000:0:99999:7:::\nalice:{SHADOW_HASH}:19500:0:99999:7:::\n"


def make_hostfs(root: Path, hostname: str = "testhost", machine_id: str = "0123456789abcdef0123456789abcdef",
                boot_time: int = 1_700_000_000, kernel: str = "6.1.0-test", uptime: float = 93_784.5) -> Path:
    """Write the files the host dataset reads under `root` and return it."""
    files = {
        "etc/machine-id": machine_id + "\n",
        "etc/os-release": OS_RELEASE,
        "proc/stat": f"cpu  1 2 3 4\nbtime {boot_time}\nprocesses 10\n",
        "proc/uptime": f"{uptime} 1000.00\n",
        "proc/sys/kernel/hostname": hostname + "\n",
        "proc/sys/kernel/osrelease": kernel + "\n",
        "proc/sys/kernel/random/boot_id": "c0ffee00-0000-4000-8000-000000000001\n",
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/shadow": SHADOW,
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _replace_text(path: Path, text: str) -> None:
    """Write `text` as the kernel shows such a file: all at once (a reader never sees it empty or half written)."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    os.replace(partial, path)


def set_hostname(root: Path, hostname: str) -> None:
    _replace_text(root / "proc/sys/kernel/hostname", hostname + "\n")


def set_boot_time(root: Path, boot_time: int) -> None:
    _replace_text(root / "proc/stat", f"cpu  1 2 3 4\nbtime {boot_time}\nprocesses 10\n")


def add_user(root: Path, name: str, uid: int, password_hash: str) -> None:
    with (root / "etc/passwd").open("a") as passwd:
        passwd.write(f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/sh\n")
    with (root / "etc/group").open("a") as group:
        group.write(f"{name}:x:{uid}:\n")
    with (root / "etc/shadow").open("a") as shadow:
        shadow.write(f"{name}:{password_hash}:19600:0:99999:7:::\n")


def set_password(root: Path, name: str, password_hash: str) -> None:
    lines = (root / "etc/shadow").read_text().splitlines()
    (root / "etc/shadow").write_text("".join(
        (f"{name}:{password_hash}:" + line.split(":", 2)[2] if line.startswith(name + ":") else line) + "\n"
        for line in lines))
