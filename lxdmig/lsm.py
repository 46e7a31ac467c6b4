"""AppArmor on this host, and whether it can confine a container the way its source does.

CRIU restores a container's tasks into an AppArmor profile: the one liblxc
names (``--lsm-profile apparmor:PROFILE`` whenever the config sets
``lxc.apparmor.profile``), or else the label the tasks had on the source.
Either way the destination's kernel must have AppArmor and the profile
must be loaded there, except ``generated`` (liblxc generates and loads it on
the destination as it restores) and ``unconfined``. The destination decides,
from its own kernel and policy (``apparmor_refusal``), before the source
freezes anything: docs/lsm.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path

from lxdmig import proc

_SECURITYFS = Path("/sys/kernel/security/apparmor")


def apparmor_enabled() -> bool:
    return _SECURITYFS.exists()


def loaded_profiles(text: str | None = None) -> set[str]:
    """Names of the AppArmor profiles loaded in the kernel (``NAME (MODE)`` lines)."""
    if text is None:
        try:
            text = (_SECURITYFS / "profiles").read_text()
        except OSError:
            return set()
    return {line.rsplit(" (", 1)[0] for line in text.splitlines() if line.strip()}


def label_base(text: str) -> str:
    """The profile a task's AppArmor label (``/proc/PID/attr/current``) confines it with, without the
    mode and any stacked namespace; "" for unconfined."""
    label = text.strip()
    if label.endswith(")"):
        label = label.rsplit(" (", 1)[0]
    base = label.split("//&", 1)[0]
    return "" if base in ("", "unconfined") else base


def task_label(pid: int) -> str:
    """The profile confining task ``pid`` (label_base), "" without AppArmor or when unconfined."""
    if not apparmor_enabled():
        return ""
    for name in ("attr/apparmor/current", "attr/current"):
        try:
            return label_base(Path(f"/proc/{pid}/{name}").read_text())
        except OSError:
            continue
    return ""


def can_generate() -> bool:
    """Whether liblxc can generate and load a container's profile here (it runs apparmor_parser)."""
    return shutil.which("apparmor_parser", path=proc.SYSTEM_PATH) is not None


def apparmor_refusal(profile: str, source_label: str, *, enabled: bool, loaded: Collection[str],
                     generator: bool) -> str:
    """Why this host cannot restore a container whose config says ``lxc.apparmor.profile = profile``
    ("" where unset) and whose tasks run under ``source_label`` on the source ("" when unconfined),
    or "" when it can. ``enabled``: this kernel has AppArmor; ``loaded``: its loaded profiles;
    ``generator``: liblxc can generate profiles here."""
    if profile:  # liblxc hands CRIU --lsm-profile apparmor:PROFILE
        if not enabled:
            return f"lxc.apparmor.profile = {profile}, and this host's kernel has no AppArmor (CRIU cannot " \
                   "apply an AppArmor profile here)"
        if profile == "generated" and not generator:
            return "lxc.apparmor.profile = generated, and this host has no apparmor_parser to generate " \
                   "the profile (install apparmor)"
        if profile not in ("generated", "unconfined") and profile not in loaded:
            return f"lxc.apparmor.profile = {profile}, and no AppArmor profile of that name is loaded here"
        return ""
    if not source_label:
        return ""
    if not enabled:
        return f"its tasks run under the AppArmor profile {source_label} on the source, and this host's " \
               "kernel has no AppArmor"
    if source_label not in loaded:
        return f"its tasks run under the AppArmor profile {source_label} on the source, which is not loaded here"
    return ""


def selinux_enabled() -> bool:
    return Path("/sys/fs/selinux/enforce").exists()


def selinux_refusal(context: str, *, apparmor: bool, selinux: bool) -> str:
    """Why this host cannot restore a container whose config says ``lxc.selinux.context = context``
    (and sets no AppArmor profile, which liblxc would pass instead), or "" when it can. CRIU uses one
    LSM, AppArmor where the kernel has it, and refuses a profile of the other."""
    if not context:
        return ""
    if apparmor or not selinux:
        return f"lxc.selinux.context = {context}, and CRIU cannot apply an SELinux context on this host " \
               f"({'its LSM is AppArmor' if apparmor else 'its kernel has no SELinux'})"
    return ""


def refusal_here(profile: str, source_label: str, selinux_context: str = "") -> str:
    """Why this host cannot confine the container as asked (apparmor_refusal, or selinux_refusal where
    the config sets no AppArmor profile), "" when it can."""
    enabled = apparmor_enabled()
    if selinux_context and not profile:
        return selinux_refusal(selinux_context, apparmor=enabled, selinux=selinux_enabled())
    return apparmor_refusal(profile, source_label, enabled=enabled,
                            loaded=loaded_profiles() if enabled else set(), generator=can_generate())
