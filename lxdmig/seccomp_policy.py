"""An LXC seccomp policy (``lxc.seccomp.profile``) received from a peer, written back from what it
means.

A policy in the container's directory (``lxdmig prepare`` writes one) arrives with the container's
files: in hardened mode liblxc's seccomp parser must not read the peer's text. The helper reads it
line by line into what each line means (version 2; a deny or allow list and its default action;
architecture sections; ``reject_force_umount``; rules: a syscall, an action, argument
comparisons), refuses what it does not know and the ``notify`` action (which hands the
container's calls to a proxy of this host), and writes the policy again in one canonical form.
"""

from __future__ import annotations

import re

MAX_BYTES = 256 << 10

_LISTS = {"denylist", "blacklist", "allowlist", "whitelist"}
_ARCHES = {"all", "x86", "x32", "x86_64", "arm", "arm64", "ppc64le", "ppc64", "ppc", "mips", "mips64",
           "mips64n32", "mipsel", "mipsel64", "mipsel64n32", "s390x", "s390"}  # (liblxc 5's)
_SYSCALL = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_NUMBER = r"(?:0x[0-9a-fA-F]{1,16}|[0-9]{1,20})"
_OPERATOR = r"(?:SCMP_CMP_(?:NE|LT|LE|EQ|GE|GT|MASKED_EQ)|!=|<=|<|==|>=|>|&=)"
_ARGUMENT = re.compile(rf"\[([0-5]),({_NUMBER}),({_OPERATOR})(?:,({_NUMBER}))?\]")
_ACTION = re.compile(r"(kill|allow|trap|errno (?:-?[0-9]{1,4}))")


class PolicyRefused(ValueError):
    """A line the helper does not let liblxc read; the message names it."""


def normalized(text: str) -> str:
    """``text`` as the helper writes it back; raises PolicyRefused naming the first line it refuses."""
    if len(text.encode()) > MAX_BYTES:
        raise PolicyRefused(f"over {MAX_BYTES} bytes")
    lines = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines or lines[0][1] != "2":
        raise PolicyRefused("not a version 2 policy (its first line must be 2)")
    if len(lines) < 2:
        raise PolicyRefused("no list type (denylist or allowlist) on its second line")
    out = ["2", _list_line(*lines[1])]
    for number, line in lines[2:]:
        out.append(_rule(number, line))
    return "\n".join(out) + "\n"


def _list_line(number: int, line: str) -> str:
    kind, _, default = line.partition(" ")
    default = " ".join(default.split())
    if kind not in _LISTS or (default and not _ACTION.fullmatch(default)):
        raise PolicyRefused(f"line {number}: {line[:80]!r} is not a list type with an optional default action")
    return f"{kind} {default}".rstrip()


def _rule(number: int, line: str) -> str:
    if line.startswith("["):
        arch = line[1:-1].lower() if line.endswith("]") else ""
        if arch not in _ARCHES:
            raise PolicyRefused(f"line {number}: {line[:80]!r} is not an architecture section")
        return f"[{arch}]"
    if line == "reject_force_umount":
        return line
    name, _, rest = line.partition(" ")
    if not _SYSCALL.fullmatch(name):
        raise PolicyRefused(f"line {number}: {name[:80]!r} is not a system call name")
    action, bracket, arguments = rest.strip().partition("[")
    action, arguments = " ".join(action.split()), (bracket + arguments).replace(" ", "")
    if action == "notify" or action.startswith("notify "):
        raise PolicyRefused(f"line {number}: {name} notify hands the container's calls to a proxy of this host")
    if action and not _ACTION.fullmatch(action):
        raise PolicyRefused(f"line {number}: {action[:80]!r} is not an action lxdmig lets a peer set")
    compared = re.findall(r"\[[^\]]*\]", arguments)
    if "".join(compared) != arguments or len(compared) > 6 or not all(_ARGUMENT.fullmatch(c) for c in compared):
        raise PolicyRefused(f"line {number}: its arguments are not [index,value,operator] or [...,mask]")
    return " ".join([name, *([action] if action else []), *compared])
