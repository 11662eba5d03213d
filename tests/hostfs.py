"""Builds synthetic host trees (a fake /etc and /proc under a hostfs root) for tests."""

from __future__ import annotations

from pathlib import Path

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""


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
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def set_hostname(root: Path, hostname: str) -> None:
    (root / "proc/sys/kernel/hostname").write_text(hostname + "\n")
