"""Damage to the spool on disk is contained: only the damaged records are lost, the rest are delivered."""

from __future__ import annotations

import os
from pathlib import Path

from tests.agent_harness import wait_for
from tests.hostfs import make_hostfs, set_hostname

FAST_HOST = "hostaudit.modules=[{module: system, datasets: [host], period: 200ms}]"


def test_random_bytes_in_the_middle_of_a_segment_lose_only_the_records_they_hit(agent_factory,
                                                                                  tmp_path: Path) -> None:
    hostfs = make_hostfs(tmp_path / "hostfs", hostname="h0")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("the output cannot write under a file: events stay spooled\n")
    first = agent_factory(overrides=(f"hostfs={hostfs}", FAST_HOST, f"output.file.path={blocked / 'out'}"),
                          workdir=tmp_path / "first")
    changes = 0

    def produced() -> bool:
        nonlocal changes
        changes += 1
        set_hostname(hostfs, f"h{changes}")
        return first.committed_sequence("host") >= 60

    wait_for(produced, 60, "60 host events spooled while the output is unavailable", interval=0.25)
    assert first.terminate() == 0
    segments = sorted((first.data / "spool" / "host").glob("*.seg"))
    segment = max(segments, key=lambda path: path.stat().st_size)
    size = segment.stat().st_size
    with segment.open("r+b") as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(64))
    spooled = first.committed_sequence("host")

    second = agent_factory(overrides=(f"hostfs={hostfs}", FAST_HOST, f"path.data={first.data}"),
                           workdir=tmp_path / "second")
    wait_for(lambda: len({e["event"]["sequence"] for e in second.events()
                          if e["event"]["sequence"] <= spooled}) >= spooled - 2, 20,
             f"all but the damaged records of {spooled} delivered; log:\n{second.log()[-3000:]}")
    assert "corrupt" in second.log() and segment.name in second.log()
    copies = list((first.data / "corrupt").iterdir())
    assert copies and all(0 < copy.stat().st_size < 4096 for copy in copies), "the damaged bytes are kept aside"
