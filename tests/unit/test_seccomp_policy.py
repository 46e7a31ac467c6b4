"""A peer's LXC seccomp policy, written back from what it means (lxdmig/seccomp_policy.py)."""

from __future__ import annotations

import pytest

from lxdmig.prepare import with_bpf_denied
from lxdmig.seccomp_policy import PolicyRefused, normalized

# LXC 5's /usr/share/lxc/config/common.seccomp, as shipped.
COMMON = """2
denylist
reject_force_umount  # comment this to allow umount -f;  not recommended
[all]
kexec_load errno 1
open_by_handle_at errno 1
init_module errno 1
finit_module errno 1
delete_module errno 1
"""


def test_lxcs_own_policy_and_prepares_are_kept_as_they_mean() -> None:
    assert normalized(COMMON) == ("2\ndenylist\nreject_force_umount\n[all]\nkexec_load errno 1\nopen_by_handle_at "
                                  "errno 1\ninit_module errno 1\nfinit_module errno 1\ndelete_module errno 1\n")
    prepared = with_bpf_denied(COMMON)
    assert normalized(prepared).endswith("[all]\nbpf errno 1\n")
    assert normalized(normalized(prepared)) == normalized(prepared)


def test_arguments_sections_and_default_actions_are_written_canonically() -> None:
    text = "2\nblacklist   errno 38\n[X86_64]\nmount errno 1 [1, 0x2, SCMP_CMP_MASKED_EQ, 0x2]\n\n# a note\nbpf\n"
    assert normalized(text) == "2\nblacklist errno 38\n[x86_64]\nmount errno 1 [1,0x2,SCMP_CMP_MASKED_EQ,0x2]\nbpf\n"


@pytest.mark.parametrize("text,why", [
    ("", "not a version 2 policy"),
    ("1\n23\n", "not a version 2 policy"),
    ("2\n", "no list type"),
    ("2\ndenylist kill-everyone\n", "not a list type"),
    ("2\ndenylist\n[all]\nioctl notify\n", "notify hands the container's calls to a proxy"),
    ("2\ndenylist\n$(touch /tmp/x)\n", "not a system call name"),
    ("2\ndenylist\nmount errno 1 [7,1,==]\n", "its arguments are not"),
    ("2\ndenylist\nmount errno 1 [1,1,==] junk\n", "its arguments are not"),
    ("2\ndenylist\nmount trace 1\n", "not an action lxdmig lets a peer set"),
    ("2\ndenylist\n[riscv64]\n", "not an architecture section"),
    ("2\ndenylist\n" + "bpf errno 1\n" * 30000, "over"),
])
def test_what_liblxc_should_not_read_is_refused_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(PolicyRefused, match=why):
        normalized(text)
