"""The dpkg reader's C speed-ups (actors/datasets/package/_dpkg_native.c) against its pure-Python path: built
here, the same records, spans, problems and install times on generated, garbled and real input, and no crash on
anything."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.datasets.package import dpkg
from actors.datasets.package.dpkg import ABSENT_STATES, Record, parse_status
from actors.datasets.package.records import Package

NATIVE = dpkg._dpkg_native


def pure_python():
    """Within it, dpkg.py takes its pure-Python path."""
    return mock.patch.object(dpkg, "_dpkg_native", None)


def test_the_c_speedups_are_built_by_the_install() -> None:
    assert NATIVE is not None, ("actors/datasets/package/_dpkg_native.c was not built: `pip install -e .` needs a "
                                "C compiler and Python's headers (setup.py makes it optional elsewhere)")


def both_parses(data: bytes) -> tuple[dpkg.ParsedStatus, dpkg.ParsedStatus]:
    with pure_python():
        python = parse_status(data)
    return parse_status(data), python


# Pieces a status file is made of, right and wrong: canonical fields, the same field twice (the first line of a
# field is the one read), odd spacing, other fields, continuations, non-ASCII text of each string width, cuts.
PIECE_TEXTS = [
    "Package: bash\n", "Package: two words\n", "Package: \n", "Package: zsh", "Status: install ok installed\n",
    "Status: install ok unpacked\n", "Status: install ok  installed\n", "Status:  a b installed\n",
    "Status: purge ok not-installed\n", "Installed-Size: 42\n", "Installed-Size: 9999999999999999\n",
    "Installed-Size: 7M\n", "Installed-Size: \n", "Architecture: amd64\n", "Architecture:  all \n",
    "Version: 1.0-1\n", "Version: 1.0 \n", "Version:  2\n", "Version: \t3\t\n", "Description: a summary\n",
    "Description:\n", "Homepage: https://example.org/\n", "Homepage:\n", " a continuation\n", " .\n",
    "# comment\n", "\tTabbed\n", "Multi-Arch: same\n", "Multi-Arch: same \n", "Depends: libc6\n", "\n", "\n\n",
    "no colon\n", ":colon first\n", "Fïeld: value\n", "Description: café ☕ 𝄞\n", "Package: lib𝄞\n",
    "Description: ünïcode\n", "\r\n", "\x00", ": \n",
]
PIECES = st.sampled_from(PIECE_TEXTS)
CANONICAL = ("Package: {name}\nStatus: install ok installed\nInstalled-Size: 3\nArchitecture: amd64\n"
             "Version: 1.0\nDescription: summary\n more\n")




def near_canonical(name: str, homepage: bool, edits: list[tuple[int, bool, str]]) -> str:
    """A canonical stanza (and its empty line) with some of its lines replaced by pieces, or pieces inserted."""
    lines = CANONICAL.format(name=name).splitlines(keepends=True)
    lines += ["Homepage: https://example.org/\n"] if homepage else []
    for at, replace, piece in edits:
        if replace:
            lines[at % len(lines)] = piece
        else:
            lines.insert(at % (len(lines) + 1), piece)
    return "".join(lines) + "\n"


STANZAS = st.one_of(PIECES, st.builds(near_canonical, st.sampled_from(["bash", "lib-x", "pkg"]), st.booleans(),
                                      st.lists(st.tuples(st.integers(0, 9), st.booleans(), PIECES), max_size=3)))


def test_every_single_edit_of_a_canonical_stanza_parses_alike() -> None:
    texts = [near_canonical(name, homepage, [(at, replace, piece)]) + CANONICAL.format(name="next") + "\n"
             for name in ("bash", "lib𝄞") for homepage in (False, True) for at in range(9)
             for replace in (False, True) for piece in PIECE_TEXTS]
    assert len(texts) > 1000
    for text in texts:
        native, python = both_parses(text.encode())
        assert native == python, text


@settings(max_examples=1500, deadline=None)
@given(st.lists(STANZAS, max_size=12))
def test_c_and_python_parse_any_text_alike(pieces: list[str]) -> None:
    native, python = both_parses("".join(pieces).encode())
    assert native == python


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(0, 300))
def test_c_and_python_parse_random_text_alike(noise: str, at: int) -> None:
    text = CANONICAL.format(name="a") + "\n" + CANONICAL.format(name="b") + "\n"
    text = text[:at] + noise + text[at:]
    native, python = both_parses(text.encode("utf-8", "surrogatepass"))
    assert native == python


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["bash", "zsh", "libc6", "dash"]), min_size=1, max_size=8),
       st.integers(0, 7), st.sampled_from(["2.0", "1.0 ", "x"]), st.sampled_from(["", "é", "𝄞"]))
def test_c_and_python_reparse_a_change_alike(names: list[str], changed: int, version: str, accent: str) -> None:
    before = "\n".join(CANONICAL.format(name=name) for name in names) + "\n"
    stanzas = before.split("\n\n")
    stanzas[changed % len(stanzas)] = stanzas[changed % len(stanzas)].replace("Version: 1.0", f"Version: {version}")
    after = ("\n\n".join(stanzas) + accent).encode()
    with pure_python():
        python = parse_status(after, parse_status(before.encode()))
    assert parse_status(after, parse_status(before.encode())) == python


def test_the_first_line_of_a_field_is_read_on_both_paths() -> None:
    twice = ("Package: bash\nStatus: install ok unpacked\nStatus: install ok installed\nInstalled-Size: many\n"
             "Installed-Size: 3\nArchitecture: amd64\nVersion: 1.0\nDescription: summary\n\n")
    native, python = both_parses(twice.encode())
    assert native == python
    assert [(record.state, record.package.size) for record in native.records] == [("unpacked", None)]


def test_the_scan_stops_at_stop_and_skips_blank_lines() -> None:
    text = "\n\n" + CANONICAL.format(name="a") + "\n\n" + CANONICAL.format(name="b") + "\n"
    records: list[Record] = []
    spans: list[tuple[int, int]] = []
    second = text.index("Package: b")
    assert NATIVE.scan_installed(text, 0, second, records, spans, Record, Package) == second
    assert [record.package.name for record in records] == ["a"] and spans == [(2, second - 1)]
    assert NATIVE.scan_installed(text, 0, second - 2, [], [], Record, Package) == 2  # cut before its empty line
    assert NATIVE.scan_installed(text, -5, 10 ** 9, records, spans, Record, Package) == len(text)


def test_bad_arguments_are_type_errors_not_crashes() -> None:
    with pytest.raises(TypeError):
        NATIVE.scan_installed("Package: a\n", 0, 10, [], [], dict, Package)
    with pytest.raises(TypeError):
        NATIVE.installed_packages(-1, [("installed", ("not", "a", "package"), False)], {}, ABSENT_STATES)
    with pytest.raises(TypeError):
        NATIVE.installed_packages(-1, [], {}, {"not-installed"})  # a set, not the frozenset


def record(name: str, architecture: str = "amd64", state: str = "installed", qualified: bool = False,
           version: str = "1.0") -> Record:
    return Record(state, Package("dpkg", name, version, architecture=architecture, size=1024), qualified)


def test_c_and_python_give_the_same_install_times(tmp_path: Path) -> None:
    info = tmp_path / "info"
    info.mkdir()
    lists = {"plain.list": 1_600_000_000, "multi:amd64.list": 1_600_000_100, "both.list": 1_600_000_200,
             "both:amd64.list": 1_600_000_300, "ünï.list": 1_600_000_400, "neg.list": -5}
    for name, mtime in lists.items():
        (info / name).write_text("/usr\n")
        os.utime(info / name, (mtime, mtime))
    (info / "linked.list").symlink_to(info / "plain.list")
    (info / "dangling.list").symlink_to(info / "nowhere")
    records = [record("plain"), record("multi", qualified=True), record("multi"), record("both"),
               record("both", qualified=True, version="2.0"), record("ünï"), record("neg"), record("linked"),
               record("dangling"), record("missing"), record("nul\x00name"), record("x" * 5000),
               record("../info/plain"), record("gone", state="config-files"), record("purged", state="not-installed"),
               record("plain", architecture="i386"), record("plain", architecture="amd64", version="3.0")]
    known = {("missing", "amd64"): 7, ("neg", "amd64"): -1, ("linked", "amd64"): None}
    descriptor = os.open(info, os.O_RDONLY | os.O_DIRECTORY)
    try:
        native = dpkg._installed_packages(descriptor, records, dict(known))
        with pure_python():
            python = dpkg._installed_packages(descriptor, records, dict(known))
        without_info = dpkg._installed_packages(None, records, {})
    finally:
        os.close(descriptor)
    assert native == python
    installed = {(package.name, package.architecture, package.version): package.installed for package in native[0]}
    assert installed == {
        ("plain", "amd64", "3.0"): 1_600_000_000,  # the later record of a slot wins, in its first place
        ("multi", "amd64", "1.0"): 1_600_000_100, ("both", "amd64", "2.0"): 1_600_000_300,
        ("ünï", "amd64", "1.0"): 1_600_000_400, ("neg", "amd64", "1.0"): -5, ("linked", "amd64", "1.0"): None,
        ("dangling", "amd64", "1.0"): None, ("missing", "amd64", "1.0"): 7, ("nul\x00name", "amd64", "1.0"): None,
        ("x" * 5000, "amd64", "1.0"): None, ("../info/plain", "amd64", "1.0"): 1_600_000_000,
        ("plain", "i386", "1.0"): 1_600_000_000}
    assert [package.name for package in native[0]][:3] == ["plain", "multi", "both"]
    assert all(package.installed is None for package in without_info[0])


def test_the_real_status_file_and_lists_read_alike() -> None:
    status = Path("/var/lib/dpkg/status")
    if not status.exists():
        pytest.skip("not a dpkg system")
    reader = dpkg.DpkgReader(Path("/"))
    native = reader.read()
    with pure_python():
        python = dpkg.DpkgReader(Path("/")).read()
    assert native == python and native.packages and native.complete
    text, position, taken = status.read_text("utf-8", "replace"), 0, []  # most stanzas are taken whole by C
    while position < len(text):
        position = NATIVE.scan_installed(text, position, len(text), taken, [], Record, Package)
        end = text.find("\n\n", position)
        position = len(text) if end < 0 else end + 2
    assert len(taken) > len(native.packages) // 2


def test_a_reader_without_the_speedups_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hostaudit.package"):
        dpkg.DpkgReader(Path("/nonexistent"))
        with pure_python():
            dpkg.DpkgReader(Path("/nonexistent"))
    assert [record.getMessage() for record in caplog.records] == [
        "dpkg: the C speed-ups were not built (no C compiler at install?): reading on the pure-Python path, about "
        "three times the CPU for a full read"]
