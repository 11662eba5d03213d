"""Tests of the user dataset (actors/datasets/user/dataset.py) on synthetic host trees and on the real host."""

from __future__ import annotations

import dataclasses
import grp
import json
import logging
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from actors.hostfs import etc_files
from actors.options import ConfigError
from actors.datasets import DatasetContext
from actors.datasets.user import dataset as user_dataset
from actors.ecs import assert_ecs
from actors.hostfs.entity import user_entity_id
from actors.event import CHANGE, ECS_VERSION, STATE, Event
from tests.sample_support import EVENT_FIELDS, flat_field_names, sample_common, sample_path

SAMPLE = sample_path("user")

HOST_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
DIGEST_KEY = bytes(range(32))

ROOT_SALT = "Qw3rTy7uIoPzX9"
ROOT_HASH = f"$6${ROOT_SALT}$kY1tq6Vb0xLwN8cGm2Zr4Hs7Jd9Fp3Ae5Ui0Oy6Tn1Ml8Kb2Xv4Cw7Qs9Rd0Ej3Gh5Bf8Na1Pz6Ly2Ik4Um7Tx0V"
ALICE_SALT = "aL1c3S4ltyS4lt"
ALICE_HASH = f"$y$j9T${ALICE_SALT}$Vq2Hn8Ks4Lp6Xm0Bz3Cf7Dg1Jr5Tw9Ye2Ua4Io8Pe6Sn0"
NEW_ROOT_SALT = "N3wS4ltF0rR00t"
NEW_ROOT_HASH = f"$6${NEW_ROOT_SALT}$Zx9Cv8Bn7Mm6Ll5Kk4Jj3Hh2Gg1Ff0Dd9Ss8Aa7Qq6Ww5Ee4Rr3Tt2Yy1Uu0Ii9Oo8Pp7"
SECRETS = (ROOT_HASH, ROOT_SALT, ALICE_HASH, ALICE_SALT, NEW_ROOT_HASH, NEW_ROOT_SALT)

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice Liddell,,,:/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
sudo:x:27:alice
alice:x:1000:
bob:x:1001:
docker:x:999:alice,bob
"""
SHADOW = f"""\
root:{ROOT_HASH}:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
alice:{ALICE_HASH}:19500:0:99999:7:::
bob::19600:0:99999:7:::
"""


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------

def write_etc(root: Path, name: str, content: str | bytes) -> None:
    """Replace <root>/etc/<name> atomically (new inode), as useradd, passwd and vipw do."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    temporary = etc / f".{name}.tmp"
    temporary.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(temporary, etc / name)


def build_hostfs(root: Path, passwd: str = PASSWD, group: str = GROUP, shadow: str | None = SHADOW) -> Path:
    write_etc(root, "passwd", passwd)
    write_etc(root, "group", group)
    if shadow is not None:
        write_etc(root, "shadow", shadow)
    return root


def make_dataset(root: Path, digest_key: bytes = DIGEST_KEY, host_id: str = HOST_ID,
                 **options: Any) -> user_dataset.UserDataset:
    return user_dataset.create(DatasetContext(hostfs=root, options=options, host_id=host_id, digest_key=digest_key))


def checked(events: Sequence[Event]) -> list[Event]:
    """Return the events after asserting each one becomes a valid ECS document."""
    for event in events:
        assert_ecs(event.stamped(1).to_document({}), EVENT_FIELDS)
    return list(events)


def changes_after(root: Path, edit: Any, **options: Any) -> list[Event]:
    """Observe, apply `edit(root)`, observe again and return the (ECS-checked) change events."""
    dataset = make_dataset(root, **options)
    before = dataset.observe()
    edit(root)
    return checked(dataset.diff(before, dataset.observe(), at_startup=False))


def audit(event: Event) -> dict[str, Any]:
    return event.fields["system"]["audit"]


def users_by_name(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {record["name"]: record for record in snapshot["users"]}


def all_text(events: Sequence[Event], snapshot: Any, records: Sequence[logging.LogRecord]) -> str:
    documents = [json.dumps(event.stamped(1).to_document({})) for event in events]
    messages = [record.getMessage() for record in records]
    return "\n".join(documents + messages + [json.dumps(snapshot), repr(events)])


@pytest.fixture
def hostfs(tmp_path: Path) -> Path:
    return build_hostfs(tmp_path)


@pytest.fixture
def trust_fresh_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust signatures of files written a moment ago (tests write them just before observing)."""
    monkeypatch.setattr(etc_files, "RACY_WINDOW_NS", 0)


# --------------------------------------------------------------------------------------------------------
# Reading and state
# --------------------------------------------------------------------------------------------------------

def test_snapshot_reads_users_groups_and_passwords_from_hostfs(hostfs: Path) -> None:
    users = users_by_name(make_dataset(hostfs).observe())

    assert list(users) == ["root", "daemon", "alice", "bob"]
    alice = users["alice"]
    assert (alice["uid"], alice["gid"], alice["dir"], alice["shell"]) == (1000, 1000, "/home/alice", "/bin/bash")
    assert alice["user_information"] == "Alice Liddell,,,"
    assert alice["groups"] == [{"gid": 1000, "name": "alice"}, {"gid": 27, "name": "sudo"},
                               {"gid": 999, "name": "docker"}]
    assert users["root"]["password"]["type"] == "shadow_password"
    assert users["daemon"]["password"]["type"] == "password_disabled"
    assert users["bob"]["password"]["type"] == "no_password"
    assert users["alice"]["password"]["last_changed_days"] == 19500


def test_state_report_has_auditbeat_fields_and_messages(hostfs: Path) -> None:
    dataset = make_dataset(hostfs)
    events = checked(dataset.state_report(dataset.observe()))

    assert [event.message for event in events] == [
        "Existing user root (UID: 0, Groups: root)",
        "Existing user daemon (UID: 1, Groups: daemon)",
        "Existing user alice (UID: 1000, Groups: alice,sudo,docker)",
        "Existing user bob (UID: 1001, Groups: bob,docker)",
    ]
    alice = events[2]
    assert (alice.action, alice.kind, alice.category, alice.type) == ("existing_user", STATE, ("iam",), ("info",))
    assert alice.fields["user"] == {"id": "1000", "name": "alice", "group": {"id": "1000", "name": "alice"}}
    assert alice.fields["related"] == {"user": ["alice"]}
    assert audit(alice)["user"] == {
        "name": "alice", "uid": "1000", "gid": "1000", "dir": "/home/alice", "shell": "/bin/bash",
        "user_information": "Alice Liddell,,,",
        "password": {"type": "shadow_password", "last_changed": "2023-05-23T00:00:00.000Z"},
        "group": [{"name": "alice", "gid": "1000", "id": "1000"}, {"name": "sudo", "gid": "27", "id": "27"},
                  {"name": "docker", "gid": "999", "id": "999"}],
        "entity_id": user_entity_id(HOST_ID, "alice", 1000),
    }
    assert "user_information" not in audit(events[3])["user"]  # empty gecos is left out, as Auditbeat


def test_entity_id_is_left_out_without_a_host_id(hostfs: Path) -> None:
    dataset = make_dataset(hostfs, host_id="")
    events = checked(dataset.state_report(dataset.observe()))
    assert all("entity_id" not in audit(event)["user"] for event in events)


def test_unknown_primary_group_gives_only_the_group_id(tmp_path: Path) -> None:
    build_hostfs(tmp_path, passwd="carol:x:1500:4242::/home/carol:/bin/sh\n")
    dataset = make_dataset(tmp_path)
    [event] = checked(dataset.state_report(dataset.observe()))

    assert event.fields["user"]["group"] == {"id": "4242"}
    assert audit(event)["user"]["group"] == [{"gid": "4242", "id": "4242"}]
    assert event.message == "Existing user carol (UID: 1500, Groups: 4242)"


def test_password_in_passwd_is_a_crypt_password(tmp_path: Path) -> None:
    build_hostfs(tmp_path, passwd=f"old:{ROOT_HASH}:1200:1200::/home/old:/bin/sh\nnone::1201:1201::/:/bin/sh\n")
    users = users_by_name(make_dataset(tmp_path).observe())
    assert users["old"]["password"]["type"] == "crypt_password"
    assert users["none"]["password"]["type"] == "no_password"


def test_detection_off_reads_no_shadow_and_emits_no_password_fields(hostfs: Path) -> None:
    shadow = str(hostfs / "etc" / "shadow")
    reads = etc_files.READ_COUNTS[shadow]
    dataset = make_dataset(hostfs, detect_password_changes=False)
    snapshot = dataset.observe()
    events = checked(dataset.state_report(snapshot))

    assert etc_files.READ_COUNTS[shadow] == reads
    assert all("password" not in audit(event)["user"] for event in events)
    assert "digest_key_id" not in snapshot


def test_real_host_root_matches_pwd() -> None:
    dataset = make_dataset(Path("/"))
    snapshot = dataset.observe()
    root = next(record for record in snapshot["users"] if record["uid"] == 0)
    expected = pwd.getpwuid(0)

    assert (root["name"], root["gid"], root["dir"], root["shell"]) == (
        expected.pw_name, expected.pw_gid, expected.pw_dir, expected.pw_shell)
    assert root["user_information"] == expected.pw_gecos
    assert root["groups"][0] == {"gid": expected.pw_gid, "name": grp.getgrgid(expected.pw_gid).gr_name}
    checked(dataset.state_report(snapshot))


def test_nss_source_lists_what_pwd_lists() -> None:
    dataset = make_dataset(Path("/"), source="nss")
    snapshot = dataset.observe()
    assert {record["name"] for record in snapshot["users"]} == {entry.pw_name for entry in pwd.getpwall()}
    root = next(record for record in snapshot["users"] if record["uid"] == 0)
    assert root["groups"][0]["gid"] == pwd.getpwuid(0).pw_gid
    checked(dataset.state_report(snapshot))


@pytest.mark.parametrize("options, setting", [
    ({"source": "ldap"}, "user.source"),
    ({"detect_password_changes": "yes"}, "user.detect_password_changes"),
])
def test_bad_options_are_refused_naming_the_setting(hostfs: Path, options: dict, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        make_dataset(hostfs, **options)


# --------------------------------------------------------------------------------------------------------
# Changes
# --------------------------------------------------------------------------------------------------------

def test_first_run_emits_no_change_events(hostfs: Path) -> None:
    dataset = make_dataset(hostfs)
    assert dataset.diff(None, dataset.observe(), at_startup=False) == []


def test_unchanged_files_emit_nothing(hostfs: Path) -> None:
    assert changes_after(hostfs, lambda root: build_hostfs(root)) == []


def test_new_user_emits_user_added(hostfs: Path) -> None:
    def add_eve(root: Path) -> None:
        write_etc(root, "passwd", PASSWD + "eve:x:1002:1002::/home/eve:/bin/zsh\n")
        write_etc(root, "group", GROUP + "eve:x:1002:\n")

    [event] = changes_after(hostfs, add_eve)
    assert (event.action, event.kind, event.type) == ("user_added", CHANGE, ("creation",))
    assert event.message == "New user eve (UID: 1002, Groups: eve)"
    assert "changes" not in audit(event)


def test_deleted_user_emits_user_removed(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "passwd", PASSWD.replace(
        "bob:x:1001:1001::/home/bob:/bin/sh\n", "")))
    assert (event.action, event.type) == ("user_removed", ("deletion",))
    assert event.message == "Removed user bob (UID: 1001, Groups: bob,docker)"


def test_rename_with_the_same_uid_is_user_changed(hostfs: Path) -> None:
    def rename(root: Path) -> None:
        write_etc(root, "passwd", PASSWD.replace("bob:x:1001", "robert:x:1001"))
        write_etc(root, "shadow", SHADOW.replace("bob::", "robert::"))

    [event] = changes_after(hostfs, rename)
    assert (event.action, event.type) == ("user_changed", ("change",))
    assert event.message == "Changed user robert (UID: 1001, Groups: bob)"  # robert is no docker member (yet)
    assert audit(event)["changes"]["fields"] == ["user.name", "system.audit.user.group"]
    assert audit(event)["changes"]["previous"]["user"] == {"name": "bob"}
    assert event.fields["related"]["user"] == ["robert", "bob"]
    assert audit(event)["user"]["entity_id"] == user_entity_id(HOST_ID, "robert", 1001)


def test_shell_and_home_change_lists_both_with_old_values(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "passwd", PASSWD.replace(
        "/home/bob:/bin/sh", "/srv/bob:/bin/bash")))
    assert event.action == "user_changed"
    assert audit(event)["changes"] == {
        "fields": ["system.audit.user.dir", "system.audit.user.shell"],
        "previous": {"system": {"audit": {"user": {"dir": "/home/bob", "shell": "/bin/sh"}}}},
    }


def test_group_membership_change_is_user_changed(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "group", GROUP.replace(
        "sudo:x:27:alice", "sudo:x:27:alice,bob")))
    assert event.message == "Changed user bob (UID: 1001, Groups: bob,sudo,docker)"
    assert audit(event)["changes"]["fields"] == ["system.audit.user.group"]
    assert audit(event)["changes"]["previous"]["system"]["audit"]["user"]["group"] == [
        {"name": "bob", "gid": "1001", "id": "1001"}, {"name": "docker", "gid": "999", "id": "999"}]


def test_primary_group_change_lists_the_ecs_group_fields(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "passwd", PASSWD.replace(
        "bob:x:1001:1001", "bob:x:1001:999")))
    assert audit(event)["changes"]["fields"] == ["user.group.id", "user.group.name", "system.audit.user.group"]
    assert audit(event)["changes"]["previous"]["user"] == {"group": {"id": "1001", "name": "bob"}}


def test_gecos_change_is_reported_unlike_auditbeat(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "passwd", PASSWD.replace(
        "1001::/home/bob", "1001:Bob Builder:/home/bob")))
    assert audit(event)["changes"] == {"fields": ["system.audit.user.user_information"], "previous": {}}


def test_reordered_group_file_is_no_change(hostfs: Path) -> None:
    reordered = "".join(reversed(GROUP.splitlines(keepends=True)))
    assert changes_after(hostfs, lambda root: write_etc(root, "group", reordered)) == []


def test_password_hash_change_emits_password_changed(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "shadow", SHADOW.replace(ROOT_HASH, NEW_ROOT_HASH)))
    assert (event.action, event.kind, event.type) == ("password_changed", CHANGE, ("change",))
    assert event.message == "Password changed for user root (UID: 0, Groups: root)"
    assert audit(event)["changes"] == {"fields": ["system.audit.user.password.hash"], "previous": {}}


def test_last_changed_alone_emits_password_changed_either_way(hostfs: Path) -> None:
    for days in ("19001", "18999"):  # Auditbeat reports only a date going back (its `Before` test)
        write_etc(hostfs, "shadow", SHADOW)
        [event] = changes_after(hostfs, lambda root: write_etc(root, "shadow", SHADOW.replace(
            f"{ROOT_HASH}:19000", f"{ROOT_HASH}:{days}")))
        assert event.action == "password_changed"
        assert audit(event)["changes"] == {
            "fields": ["system.audit.user.password.last_changed"],
            "previous": {"system": {"audit": {"user": {"password": {"last_changed": "2022-01-08T00:00:00.000Z"}}}}},
        }


def test_locking_an_account_emits_password_changed(hostfs: Path) -> None:
    [event] = changes_after(hostfs, lambda root: write_etc(root, "shadow", SHADOW.replace(
        f"alice:{ALICE_HASH}", f"alice:!{ALICE_HASH}")))
    assert event.action == "password_changed"
    assert event.message == "Password changed for user alice (UID: 1000, Groups: alice,sudo,docker)"
    assert audit(event)["user"]["password"]["type"] == "password_disabled"
    assert audit(event)["changes"]["fields"] == ["system.audit.user.password.type", "system.audit.user.password.hash"]
    assert audit(event)["changes"]["previous"] == {
        "system": {"audit": {"user": {"password": {"type": "shadow_password"}}}}}


def test_hash_changed_while_locked_is_still_seen(tmp_path: Path) -> None:
    build_hostfs(tmp_path, shadow=SHADOW.replace(f"alice:{ALICE_HASH}", f"alice:!{ALICE_HASH}"))
    [event] = changes_after(tmp_path, lambda root: write_etc(root, "shadow", SHADOW.replace(
        f"alice:{ALICE_HASH}", f"alice:!{NEW_ROOT_HASH}")))
    assert audit(event)["changes"]["fields"] == ["system.audit.user.password.hash"]


def test_password_and_shell_change_give_two_events_password_first(hostfs: Path) -> None:
    def edit(root: Path) -> None:
        write_etc(root, "shadow", SHADOW.replace(ROOT_HASH, NEW_ROOT_HASH))
        write_etc(root, "passwd", PASSWD.replace("/root:/bin/bash", "/root:/bin/zsh"))

    assert [event.action for event in changes_after(hostfs, edit)] == ["password_changed", "user_changed"]


def test_accounts_sharing_a_uid_pair_by_name_first(tmp_path: Path) -> None:
    build_hostfs(tmp_path, passwd=PASSWD + "toor:x:0:0::/root:/bin/sh\n")
    [event] = changes_after(tmp_path, lambda root: write_etc(root, "passwd", PASSWD + "toor:x:0:0::/root:/bin/csh\n"))
    assert event.fields["user"]["name"] == "toor"
    assert audit(event)["changes"]["fields"] == ["system.audit.user.shell"]


def test_changes_with_password_detection_off_ignore_the_shadow(hostfs: Path) -> None:
    events = changes_after(hostfs, lambda root: write_etc(root, "shadow", SHADOW.replace(ROOT_HASH, NEW_ROOT_HASH)),
                           detect_password_changes=False)
    assert events == []


# --------------------------------------------------------------------------------------------------------
# Persistence: the snapshot as the runtime stores it
# --------------------------------------------------------------------------------------------------------

def round_trip(snapshot: Any) -> Any:
    return json.loads(json.dumps(snapshot))


def test_json_round_trip_gives_no_spurious_diff(hostfs: Path) -> None:
    dataset = make_dataset(hostfs)
    snapshot = dataset.observe()
    assert dataset.diff(round_trip(snapshot), snapshot, at_startup=True) == []
    assert make_dataset(hostfs).diff(round_trip(snapshot), make_dataset(hostfs).observe(), at_startup=True) == []


def test_changes_made_while_stopped_are_found_after_a_restart(hostfs: Path) -> None:
    saved = round_trip(make_dataset(hostfs).observe())
    write_etc(hostfs, "shadow", SHADOW.replace(ROOT_HASH, NEW_ROOT_HASH))
    write_etc(hostfs, "passwd", PASSWD + "eve:x:1002:1002::/home/eve:/bin/sh\n")

    restarted = make_dataset(hostfs)
    events = checked(restarted.diff(saved, restarted.observe(), at_startup=True))
    assert [(event.action, event.fields["user"]["name"]) for event in events] == [
        ("password_changed", "root"), ("user_added", "eve")]


def test_another_digest_key_hides_hash_changes_with_one_warning(
    hostfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = round_trip(make_dataset(hostfs, digest_key=b"\x01" * 32).observe())
    restarted = make_dataset(hostfs, digest_key=b"\x02" * 32)
    current = restarted.observe()
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        assert restarted.diff(saved, current, at_startup=True) == []
        assert restarted.diff(saved, current, at_startup=True) == []
    assert len([record for record in caplog.records if "another digest key" in record.getMessage()]) == 1


def test_an_empty_digest_key_warns_and_uses_a_random_key(hostfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        first, second = make_dataset(hostfs, digest_key=b""), make_dataset(hostfs, digest_key=b"")
    warnings = [record for record in caplog.records if "random in-memory key" in record.getMessage()]
    assert len(warnings) == 2 and warnings[0].name == "hostaudit.user"
    assert first.observe()["digest_key_id"] != second.observe()["digest_key_id"]


def test_a_corrupt_saved_snapshot_gives_no_events(hostfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_dataset(hostfs)
    current = dataset.observe()
    assert dataset.diff({"format": 99}, current, at_startup=True) == []
    assert dataset.diff(["junk"], current, at_startup=True) == []
    broken = round_trip(current)
    broken["users"][3] = {"name": "bob"}  # bob's record is unreadable: he looks new, nothing crashes
    assert [event.action for event in checked(dataset.diff(broken, current, at_startup=True))] == ["user_added"]


# --------------------------------------------------------------------------------------------------------
# Cheap when nothing changed
# --------------------------------------------------------------------------------------------------------

def reads_of(root: Path) -> dict[str, int]:
    return {name: etc_files.READ_COUNTS[str(root / "etc" / name)] for name in ("passwd", "group", "shadow")}


def test_untouched_files_are_not_opened_again(hostfs: Path, trust_fresh_files: None) -> None:
    dataset = make_dataset(hostfs)
    first = dataset.observe()
    after_first = reads_of(hostfs)
    assert after_first == {"passwd": 1, "group": 1, "shadow": 1}

    assert dataset.observe() is first
    assert reads_of(hostfs) == after_first


def test_a_replaced_file_is_read_again(hostfs: Path, trust_fresh_files: None) -> None:
    dataset = make_dataset(hostfs)
    dataset.observe()
    write_etc(hostfs, "group", GROUP + "extra:x:5000:bob\n")
    snapshot = dataset.observe()
    assert reads_of(hostfs) == {"passwd": 2, "group": 2, "shadow": 2}
    assert {"gid": 5000, "name": "extra"} in users_by_name(snapshot)["bob"]["groups"]


def test_a_file_changed_just_before_the_read_is_read_again(hostfs: Path) -> None:
    dataset = make_dataset(hostfs)  # the files were just written: inside the racy window
    dataset.observe()
    dataset.observe()
    assert reads_of(hostfs)["passwd"] == 2


def test_settled_files_are_trusted(hostfs: Path) -> None:
    old = 1_600_000_000
    for name in ("passwd", "group", "shadow"):
        os.utime(hostfs / "etc" / name, (old, old))
    signature = etc_files.stat_signature(hostfs / "etc" / "passwd")
    assert signature is not None and not signature.settled(signature.ctime_ns)  # ctime is now: not yet
    assert signature.settled(signature.ctime_ns + etc_files.RACY_WINDOW_NS + 1)


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------

def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "hostaudit.user" and record.levelno == logging.WARNING]


def test_malformed_lines_are_skipped_with_one_warning_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwd = ("# comment\n\n" + PASSWD + "short:x:5\nnotnum:x:abc:1::/:/bin/sh\n" + "huge:x:9:9::/:" + "s" * 10
              ).encode() + b"\nlatin:x:7:7:Ren\xe9:/:/bin/sh\n"
    group = GROUP + "nogid:x::\n"
    shadow = SHADOW + f"ghost:{ROOT_HASH}:notaday:0:99999:7:::\n" + f"alice:{ALICE_HASH}\n"
    build_hostfs(tmp_path, group=group, shadow=shadow)
    write_etc(tmp_path, "passwd", passwd)
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        snapshot = dataset.observe()
        write_etc(tmp_path, "group", group + "\n")  # re-read, same problems: no second warning
        dataset.observe()
    warnings = warnings_from(caplog)

    assert [record["name"] for record in snapshot["users"]] == ["root", "daemon", "alice", "bob", "huge"]
    assert len(warnings) == 3
    passwd_warning, group_warning, shadow_warning = warnings
    assert str(tmp_path / "etc" / "passwd") in passwd_warning
    assert "line 7: wrong number of fields (3, expected 7)" in passwd_warning
    assert "line 8: uid is not a decimal number" in passwd_warning
    assert "line 10: not valid UTF-8" in passwd_warning
    assert "line 7: gid is not a decimal number" in group_warning
    assert str(tmp_path / "etc" / "shadow") in shadow_warning
    assert "line 5: last password change is not a number" in shadow_warning
    assert "line 6: wrong number of fields (2, expected 9)" in shadow_warning
    assert ROOT_SALT not in shadow_warning and ALICE_SALT not in shadow_warning and "ghost" not in shadow_warning


def test_new_problems_in_a_file_are_warned_about_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_hostfs(tmp_path, passwd=PASSWD + "bad\n")
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        dataset.observe()
        write_etc(tmp_path, "passwd", PASSWD + "bad\nworse:x\n")
        dataset.observe()
    assert len(warnings_from(caplog)) == 2


def test_a_directory_in_place_of_the_shadow_file_drops_password_fields_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_hostfs(tmp_path, shadow=None)
    (tmp_path / "etc" / "shadow").mkdir()
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        snapshot = dataset.observe()
        write_etc(tmp_path, "passwd", PASSWD)  # read again: still unreadable, no second warning
        dataset.observe()
    warnings = warnings_from(caplog)

    assert len(warnings) == 1 and str(tmp_path / "etc" / "shadow") in warnings[0]
    users = users_by_name(snapshot)
    assert "password" not in users["root"]
    events = checked(dataset.state_report(snapshot))
    assert all("password" not in audit(event)["user"] for event in events)


def test_password_fields_come_back_without_false_changes_when_shadow_is_readable_again(tmp_path: Path) -> None:
    build_hostfs(tmp_path, shadow=None)
    (tmp_path / "etc" / "shadow").mkdir()
    dataset = make_dataset(tmp_path)
    before = dataset.observe()
    (tmp_path / "etc" / "shadow").rmdir()
    write_etc(tmp_path, "shadow", SHADOW)
    after = dataset.observe()
    assert users_by_name(after)["root"]["password"]["type"] == "shadow_password"
    assert dataset.diff(before, after, at_startup=False) == []


@pytest.fixture
def world_readable_hostfs() -> Iterator[Path]:
    """A host tree an unprivileged user can traverse (pytest's tmp_path is private to root), shadow mode 000."""
    root = Path(tempfile.mkdtemp(prefix="hostaudit-user-"))
    try:
        build_hostfs(root)
        root.chmod(0o755)
        (root / "etc").chmod(0o755)
        (root / "etc" / "shadow").chmod(0o000)
        yield root
    finally:
        shutil.rmtree(root)


def observe_as_nobody(root: Path) -> dict[str, Any]:
    """Fork, drop to the `nobody` user, observe `root`; return the snapshot and the warnings logged."""
    nobody = pwd.getpwnam("nobody")
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(reader)
            warnings: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("hostaudit.user").addHandler(handler)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            snapshot = make_dataset(root).observe()
            os.write(writer, json.dumps({"snapshot": snapshot, "warnings": warnings}).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(output)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_an_unreadable_shadow_omits_password_fields_with_one_warning(world_readable_hostfs: Path) -> None:
    result = observe_as_nobody(world_readable_hostfs)

    users = users_by_name(result["snapshot"])
    assert set(users) == {"root", "daemon", "alice", "bob"}
    assert all("password" not in record for record in users.values())
    [warning] = result["warnings"]
    assert str(world_readable_hostfs / "etc" / "shadow") in warning and "Permission denied" in warning


def test_an_unreadable_passwd_keeps_the_last_users(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_hostfs(tmp_path)
    dataset = make_dataset(tmp_path)
    before = dataset.observe()
    (tmp_path / "etc" / "passwd").unlink()
    (tmp_path / "etc" / "passwd").mkdir()
    with caplog.at_level(logging.WARNING, logger="hostaudit.user"):
        after = dataset.observe()
        dataset.observe()
    assert after == before and dataset.diff(before, after, at_startup=False) == []
    assert len(warnings_from(caplog)) == 1


def test_without_any_readable_passwd_there_is_no_user_and_no_event(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    dataset = make_dataset(tmp_path)
    snapshot = dataset.observe()
    assert snapshot["users"] is None
    assert dataset.state_report(snapshot) == []
    build_hostfs(tmp_path)
    assert dataset.diff(snapshot, dataset.observe(), at_startup=False) == []


# --------------------------------------------------------------------------------------------------------
# The hash never leaves the dataset
# --------------------------------------------------------------------------------------------------------

def test_password_hashes_appear_in_no_event_log_record_or_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken_lines = (f"ghost:{ROOT_HASH}:x:0:99999:7:::\n" f"{ALICE_HASH}\n" f"evil:{NEW_ROOT_HASH}:1:2\n")
    build_hostfs(tmp_path, passwd=PASSWD + f"legacy:{ALICE_HASH}:1300:1300::/:/bin/sh\n",
                 shadow=SHADOW + broken_lines)
    with caplog.at_level(logging.DEBUG):
        dataset = make_dataset(tmp_path)
        first = dataset.observe()
        events = list(dataset.state_report(first))
        write_etc(tmp_path, "shadow", SHADOW.replace(ROOT_HASH, NEW_ROOT_HASH).replace(
            f"alice:{ALICE_HASH}", f"alice:!{ALICE_HASH}") + broken_lines)
        second = dataset.observe()
        events += dataset.diff(first, second, at_startup=False)
    checked(events)
    assert {"password_changed"} <= {event.action for event in events}

    text = all_text(events, [first, second], caplog.records)
    for secret in SECRETS:
        assert secret not in text
    assert "ghost" not in text  # nothing of a malformed shadow line is logged, not even the name


def test_shadow_entries_do_not_show_their_hash() -> None:
    [entry] = etc_files.parse_shadow(f"root:{ROOT_HASH}:19000:0:99999:7:::\n".encode()).entries
    assert ROOT_SALT not in repr(entry) and ROOT_SALT not in str(entry)
    [passwd_entry] = etc_files.parse_passwd(f"old:{ROOT_HASH}:1:1::/:/bin/sh\n".encode()).entries
    assert ROOT_SALT not in repr(passwd_entry)


# --------------------------------------------------------------------------------------------------------
# Sample document
# --------------------------------------------------------------------------------------------------------

def sample_document(root: Path) -> dict[str, Any]:
    """Return the `user_added` document for user elastic, as the runtime would write it."""
    build_hostfs(root, passwd=PASSWD, group=GROUP + "elastic:x:1002:\n")
    dataset = make_dataset(root)
    before = dataset.observe()
    write_etc(root, "passwd", PASSWD + "elastic:x:1002:1002:Elastic,,,:/home/elastic:/bin/bash\n")
    write_etc(root, "group", GROUP.replace("docker:x:999:alice,bob", "docker:x:999:alice,bob,elastic")
              + "elastic:x:1002:\n")
    write_etc(root, "shadow", SHADOW + f"elastic:{NEW_ROOT_HASH}:19675:0:99999:7:::\n")
    [event] = dataset.diff(before, dataset.observe(), at_startup=False)
    common = sample_common({"id": HOST_ID, "name": "ubuntu-jammy", "hostname": "ubuntu-jammy"})
    event = dataclasses.replace(event, timestamp=1_700_018_680.123)
    return event.stamped(1).to_document(common)


def test_sample_document_has_the_fields_we_emit(tmp_path: Path) -> None:
    document = sample_document(tmp_path)
    assert_ecs(document, EVENT_FIELDS)
    if os.environ.get("HOSTAUDIT_UPDATE_SAMPLES") == "1":
        SAMPLE.parent.mkdir(parents=True, exist_ok=True)
        SAMPLE.write_text(json.dumps(document, indent=2) + "\n")

    sample = json.loads(SAMPLE.read_text())

    assert flat_field_names(document) == flat_field_names(sample)
    assert sample["message"] == document["message"] == "New user elastic (UID: 1002, Groups: elastic,docker)"
    assert sample["event"]["action"] == "user_added"
    assert sample["ecs"]["version"] == ECS_VERSION
    assert_ecs(sample, EVENT_FIELDS)
