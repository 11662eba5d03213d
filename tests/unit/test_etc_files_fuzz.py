"""Property-based tests of the passwd, group and shadow parsers (actors/hostfs/etc_files.py), and their file cache."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.hostfs import etc_files
from actors.hostfs.etc_files import GroupEntry, MalformedLine, Parsed, PasswdEntry, ShadowEntry

FILE_PARSERS: dict[str, Callable[[bytes], Parsed[Any]]] = {
    "passwd": etc_files.parse_passwd,
    "group": etc_files.parse_group,
    "shadow": etc_files.parse_shadow,
}
LINE_PARSERS: dict[str, Callable[[str], Any]] = {
    "passwd": etc_files.parse_passwd_line,
    "group": etc_files.parse_group_line,
    "shadow": etc_files.parse_shadow_line,
}

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like these files: colons, commas, digits, signs, blanks, newlines, and anything else.
colon_heavy_text = st.text(
    alphabet=st.one_of(st.sampled_from(":::,,0123456789-+#!*$ \t\n\r\x00"), st.characters()), max_size=200
)

# Valid field values: no colon, comma or newline; names neither empty, nor blank-led, nor NIS markers.
field_text = st.text(alphabet=st.characters(exclude_characters=":\n,\x00", exclude_categories=("Cs",)),
                     max_size=30)
names = st.text(alphabet=st.characters(exclude_characters=":\n,\x00+-#", exclude_categories=("Cs", "Zs", "Cc")),
                min_size=1, max_size=20)
ids = st.integers(min_value=0, max_value=etc_files.MAX_ID)
days = st.one_of(st.none(), st.integers(min_value=0, max_value=etc_files.MAX_DAYS))


def _not_led_by_blank(text: str) -> bool:
    return not text[:1].isspace()


passwd_entries = st.builds(PasswdEntry, name=names.filter(_not_led_by_blank), password=field_text, uid=ids,
                           gid=ids, gecos=field_text, home=field_text, shell=field_text)
group_entries = st.builds(GroupEntry, name=names.filter(_not_led_by_blank), gid=ids,
                          members=st.lists(names.map(str.strip).filter(bool), max_size=5).map(tuple))
shadow_entries = st.builds(ShadowEntry, name=names.filter(_not_led_by_blank), password=field_text,
                           last_changed_days=days)


def passwd_line(entry: PasswdEntry) -> str:
    return ":".join([entry.name, entry.password, str(entry.uid), str(entry.gid), entry.gecos, entry.home, entry.shell])


def group_line(entry: GroupEntry) -> str:
    return f"{entry.name}:x:{entry.gid}:{','.join(entry.members)}"


def shadow_line(entry: ShadowEntry) -> str:
    last = "" if entry.last_changed_days is None else str(entry.last_changed_days)
    return f"{entry.name}:{entry.password}:{last}:0:99999:7:::"


VALID = {
    "passwd": (passwd_entries, passwd_line),
    "group": (group_entries, group_line),
    "shadow": (shadow_entries, shadow_line),
}


def is_subsequence(wanted: list[Any], found: tuple[Any, ...]) -> bool:
    remaining = iter(found)
    return all(any(item == candidate for candidate in remaining) for item in wanted)


# --------------------------------------------------------------------------------------------------------
# No exception escapes
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", FILE_PARSERS)
@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(kind: str, data: bytes) -> None:
    parsed = FILE_PARSERS[kind](data)
    assert isinstance(parsed.entries, tuple) and isinstance(parsed.problems, tuple)
    assert all(1 <= problem.line <= data.count(b"\n") + 1 for problem in parsed.problems)


@pytest.mark.parametrize("kind", FILE_PARSERS)
@FUZZ
@given(lines=st.lists(colon_heavy_text, max_size=20))
def test_arbitrary_text_lines_never_raise(kind: str, lines: list[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    FILE_PARSERS[kind](data)


@pytest.mark.parametrize("kind", LINE_PARSERS)
@FUZZ
@given(line=colon_heavy_text)
def test_a_line_parser_raises_only_malformed_line(kind: str, line: str) -> None:
    try:
        LINE_PARSERS[kind](line)
    except MalformedLine:
        pass


@FUZZ
@given(line=colon_heavy_text)
def test_a_parsed_passwd_line_round_trips(line: str) -> None:
    try:
        entry = etc_files.parse_passwd_line(line)
    except MalformedLine:
        return
    assert passwd_line(entry) == line


# --------------------------------------------------------------------------------------------------------
# Valid lines among garbage are still parsed
# --------------------------------------------------------------------------------------------------------

garbage_lines = st.one_of(
    st.binary(max_size=80).map(lambda raw: raw.replace(b"\n", b"")),
    colon_heavy_text.map(lambda text: text.replace("\n", "").encode("utf-8", "surrogatepass")),
)


@pytest.mark.parametrize("kind", VALID)
@FUZZ
@given(data=st.data())
def test_valid_lines_mixed_with_garbage_are_parsed(kind: str, data: st.DataObject) -> None:
    entries_strategy, render = VALID[kind]
    valid = data.draw(st.lists(entries_strategy, max_size=10), label="valid")
    garbage = data.draw(st.lists(garbage_lines, max_size=10), label="garbage")
    lines = [render(entry).encode() for entry in valid] + garbage
    order = data.draw(st.permutations(range(len(lines))), label="order")
    mixed = [lines[index] for index in order]
    kept_valid = [valid[index] for index in order if index < len(valid)]

    parsed = FILE_PARSERS[kind](b"\n".join(mixed))

    assert is_subsequence(kept_valid, parsed.entries)
    assert len(parsed.entries) + len(parsed.problems) <= len(mixed)


# --------------------------------------------------------------------------------------------------------
# Specific bad input
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("root:x:0:0:root:/root", "wrong number of fields (6, expected 7)"),
    ("root:x:0:0:root:/root:/bin/bash:extra", "wrong number of fields (8, expected 7)"),
    ("root:x:zero:0:root:/root:/bin/bash", "uid is not a decimal number"),
    ("root:x:0:-1:root:/root:/bin/bash", "gid is not a decimal number"),
    ("root:x:4294967295:0::/:/bin/sh", "uid is out of range (max 4294967294)"),
    ("root:x:٣:0::/:/bin/sh", "uid is not a decimal number"),  # a non-ASCII digit
    (":x:0:0::/:/bin/sh", "empty user name"),
    ("+::::::", "NIS compat entry"),
])
def test_malformed_passwd_lines_say_why(line: str, reason: str) -> None:
    with pytest.raises(MalformedLine, match=reason.replace("(", r"\(").replace(")", r"\)")):
        etc_files.parse_passwd_line(line)


def test_blank_comment_and_indented_lines() -> None:
    parsed = etc_files.parse_passwd(b"\n   \n# root:x:0:0::/:/bin/sh\n  root:x:0:0::/root:/bin/sh\n")
    assert [entry.name for entry in parsed.entries] == ["root"] and parsed.problems == ()


def test_group_members_are_trimmed_and_empty_ones_dropped() -> None:
    [entry] = etc_files.parse_group(b"docker:x:999: alice ,,bob,\n").entries
    assert entry.members == ("alice", "bob")


def test_shadow_days_empty_or_negative_mean_unknown() -> None:
    parsed = etc_files.parse_shadow(b"a:*:::::::\nb:*:-1:0:99999:7:::\nc:*:19000:0:99999:7:::\nd:*:99999999::::::\n")
    assert [(entry.name, entry.last_changed_days) for entry in parsed.entries] == [("a", None), ("b", None),
                                                                                 ("c", 19000)]
    assert [(problem.line, problem.reason) for problem in parsed.problems] == [
        (4, f"last password change is out of range (max {etc_files.MAX_DAYS} days)")]


def test_a_very_long_line_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etc_files, "MAX_LINE_BYTES", 1000)
    data = b"root:x:0:0::/root:/bin/sh\nlong:x:1:1:" + b"g" * 2000 + b":/:/bin/sh\nbob:x:2:2::/:/bin/sh\n"
    parsed = etc_files.parse_passwd(data)
    assert [entry.name for entry in parsed.entries] == ["root", "bob"]
    assert parsed.problems == (etc_files.LineProblem(2, "line longer than 1000 bytes"),)


def test_a_real_sized_long_group_line_is_kept() -> None:
    members = ",".join(f"user{number}" for number in range(20_000))  # ~190 KB
    [entry] = etc_files.parse_group(f"staff:x:50:{members}\n".encode()).entries
    assert len(entry.members) == 20_000


def test_a_file_beyond_the_size_limit_is_cut_at_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etc_files, "MAX_FILE_BYTES", 60)
    data = b"root:x:0:0::/root:/bin/sh\nbob:x:2:2::/:/bin/sh\nlast:x:3:3::/:/bin/sh\n"
    parsed = etc_files.parse_content(data, etc_files.parse_passwd)
    assert [entry.name for entry in parsed.entries] == ["root", "bob"]
    assert parsed.problems[-1].line == 3 and "larger than 60 bytes" in parsed.problems[-1].reason


# --------------------------------------------------------------------------------------------------------
# Reading files and the shared cache
# --------------------------------------------------------------------------------------------------------

def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_read_passwd_and_group_index_by_id_first_entry_wins(tmp_path: Path) -> None:
    write(tmp_path / "etc/passwd",
          "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/csh\nbob:x:1001:1001::/:/bin/sh\n")
    write(tmp_path / "etc/group", "root:x:0:\nwheel:x:0:bob\n")
    assert {uid: entry.name for uid, entry in etc_files.read_passwd(tmp_path).items()} == {0: "root", 1001: "bob"}
    assert etc_files.user_names(tmp_path) == {0: "root", 1001: "bob"}
    assert etc_files.group_names(tmp_path) == {0: "root"}


def test_read_passwd_is_cached_while_the_file_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etc_files, "RACY_WINDOW_NS", 0)
    path = tmp_path / "etc/passwd"
    write(path, "root:x:0:0::/root:/bin/sh\n")
    etc_files.read_passwd(tmp_path)
    etc_files.read_passwd(tmp_path)
    assert etc_files.READ_COUNTS[str(path)] == 1
    write(path, "root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n")
    assert set(etc_files.read_passwd(tmp_path)) == {0, 1001}
    assert etc_files.READ_COUNTS[str(path)] == 2


def test_a_missing_or_unreadable_file_gives_an_empty_index(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert etc_files.read_passwd(tmp_path) == {}
    (tmp_path / "etc" / "group").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert etc_files.read_group(tmp_path) == {}
        assert etc_files.read_group(tmp_path) == {}
    assert len([record for record in caplog.records if "Is a directory" in record.getMessage()]) == 1


def test_read_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(etc_files.procfs.Unreadable, match="not a regular file"):
        etc_files.read_file(fifo)


def test_the_same_problems_are_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("hostaudit.test")
    problems = [etc_files.LineProblem(number, "wrong number of fields (1, expected 7)") for number in range(1, 14)]
    with caplog.at_level(logging.WARNING, logger="hostaudit.test"):
        etc_files.report_problems(tmp_path / "passwd", problems, log)
        etc_files.report_problems(tmp_path / "passwd", problems, log)
        etc_files.report_problems(tmp_path / "passwd", [], log)
        etc_files.report_problems(tmp_path / "passwd", problems, log)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "skipped 13 malformed lines" in messages[0] and "and 3 more" in messages[0]


def test_shuffled_real_files_parse_the_same() -> None:
    """The real /etc/passwd and /etc/group parse, and give the same entries in any line order."""
    for name, parser in (("passwd", etc_files.parse_passwd), ("group", etc_files.parse_group)):
        data = Path("/etc", name).read_bytes()
        parsed = parser(data)
        assert 0 in {entry.uid if isinstance(entry, PasswdEntry) else entry.gid for entry in parsed.entries}
        lines = data.splitlines()
        random.Random(7).shuffle(lines)
        assert sorted(map(repr, parser(b"\n".join(lines)).entries)) == sorted(map(repr, parsed.entries))
