"""The kernel's audit state (enabled flag and rules) over netlink, kept and put back around an audit client's run.

Auditbeat's auditd module enables audit and loads rules; what it leaves behind (a rule, `enabled=1`) is global
to the machine and taxes every later syscall of every process: the kernel then keeps an audit context per task
and, for each path looked up, reads the file's capability xattr. A benchmark run after it measures that tax.
auditctl is not needed (it is often not installed): this speaks the audit netlink protocol directly.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

NETLINK_AUDIT = 9
AUDIT_GET, AUDIT_SET, AUDIT_LIST_RULES, AUDIT_DEL_RULE = 1000, 1001, 1013, 1012
AUDIT_STATUS_ENABLED = 1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")
_STATUS = struct.Struct("=IIIIIIII")  # mask enabled failure pid rate_limit backlog_limit lost backlog


@dataclass(frozen=True)
class AuditState:
    """Whether audit is enabled, and the rules loaded (each as the kernel lists it, to delete it as is)."""

    enabled: int
    rules: tuple[bytes, ...]


def _request(kind: int, payload: bytes = b"", flags: int = NLM_F_REQUEST | NLM_F_ACK) -> list[tuple[int, bytes]]:
    """Send one audit request; its replies (type, payload) up to the ack or the end of a dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as audit:
        audit.settimeout(5)
        audit.bind((0, 0))
        audit.send(_HEADER.pack(_HEADER.size + len(payload), kind, flags, 1, 0) + payload)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = audit.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, reply, _, _, _ = _HEADER.unpack_from(data, offset)
                body = data[offset + _HEADER.size:offset + length]
                if reply == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", body)[0]
                    if error:
                        raise OSError(error, f"audit netlink request {kind}")
                    if kind != AUDIT_GET:
                        return replies
                elif reply == NLMSG_DONE:
                    return replies
                else:
                    replies.append((reply, body))
                    if kind == AUDIT_GET:
                        return replies
                offset += (length + 3) & ~3


def read_state() -> AuditState | None:
    """The current audit state; None when this kernel or process cannot tell (no CONFIG_AUDIT, not root)."""
    try:
        [(_, status)] = [reply for reply in _request(AUDIT_GET) if reply[0] == AUDIT_GET]
        rules = _request(AUDIT_LIST_RULES, flags=NLM_F_REQUEST | NLM_F_DUMP)
    except (OSError, ValueError):
        return None
    return AuditState(_STATUS.unpack_from(status)[1], tuple(body for kind, body in rules if kind == AUDIT_LIST_RULES))


def restore(before: AuditState | None) -> None:
    """Delete the rules loaded since `before` and set `enabled` back; one line on stderr when it did something."""
    now = read_state()
    if before is None or now is None:
        return
    left = [rule for rule in now.rules if rule not in before.rules]
    for rule in left:
        _request(AUDIT_DEL_RULE, rule)
    if now.enabled != before.enabled:
        _request(AUDIT_SET, _STATUS.pack(AUDIT_STATUS_ENABLED, before.enabled, 0, 0, 0, 0, 0, 0))
    if left or now.enabled != before.enabled:
        print(f"audit state put back: {len(left)} rule(s) left by the audit client deleted, enabled "
              f"{now.enabled} -> {before.enabled}", file=sys.stderr)


def warn_if_enabled(before_what: str = "these figures") -> None:
    """One line on stderr when audit is on: every syscall of every process then pays for it, ours included."""
    state = read_state()
    if state is not None and (state.enabled or state.rules):
        print(f"warning: kernel audit is enabled ({len(state.rules)} rule(s)): every syscall on this machine pays "
              f"for it, so {before_what} are not those of a host without audit (left by an audit client? "
              f"`python ops/bench/audit_state.py --reset` turns it off)", file=sys.stderr)


def main() -> None:
    """`python ops/bench/audit_state.py [--reset]`: print the state; --reset deletes every rule and disables."""
    state = read_state()
    if state is None:
        sys.exit("cannot read the audit state (no CONFIG_AUDIT, or not root)")
    print(f"enabled={state.enabled} rules={len(state.rules)}")
    if "--reset" in sys.argv[1:]:
        restore(AuditState(0, ()))


if __name__ == "__main__":
    main()
