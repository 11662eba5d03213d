"""Tests of the one definition of `system.audit.changes` (actors/event.py), which the host and user datasets share."""

from __future__ import annotations

from actors.event import changed_fields, describe_changes, put_dotted, same_value


def test_lists_compare_as_multisets_of_any_json_values() -> None:
    assert same_value(["10.0.0.1", "fe80::1"], ["fe80::1", "10.0.0.1"])
    assert same_value([{"gid": 1, "name": "a"}, {"name": "b", "gid": 2}],
                      [{"gid": 2, "name": "b"}, {"name": "a", "gid": 1}])
    assert not same_value(["a", "a", "b"], ["a", "b", "b"])  # a multiset, not a set
    assert not same_value(["1"], [1])  # "1" and 1 are different values
    assert same_value("x", "x") and not same_value(None, "") and not same_value([], None)


def test_changed_fields_keep_the_order_asked_for() -> None:
    before = {"user.name": "alice", "user.group.id": "1000", "system.audit.user.group": [{"id": 1}, {"id": 2}]}
    after = {"user.name": "alicia", "user.group.id": "1000", "system.audit.user.group": [{"id": 2}, {"id": 1}],
             "system.audit.user.shell": "/bin/zsh"}
    names = ["system.audit.user.shell", "user.group.id", "system.audit.user.group", "user.name"]
    assert changed_fields(before, after, names) == ["system.audit.user.shell", "user.name"]


def test_describe_changes_nests_previous_values_and_withholds_secrets() -> None:
    previous = {"host.hostname": "old", "host.os.kernel": "6.1", "host.ip": [], "secret.hash": "$6$salt$hash",
                "host.name": None}
    changes = describe_changes(previous, ["host.hostname", "host.os.kernel", "host.ip", "secret.hash", "host.name"],
                               withheld=("secret.hash",))
    assert changes == {"fields": ["host.hostname", "host.os.kernel", "host.ip", "secret.hash", "host.name"],
                       "previous": {"host": {"hostname": "old", "os": {"kernel": "6.1"}}}}
    assert "$6$" not in repr(changes)


def test_put_dotted_creates_the_parents() -> None:
    target: dict = {"user": {"id": "1"}}
    put_dotted(target, "user.group.name", "staff")
    put_dotted(target, "top", 1)
    assert target == {"user": {"id": "1", "group": {"name": "staff"}}, "top": 1}
