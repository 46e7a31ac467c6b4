"""Whether a destination can confine a container as its source does (lsm: a pure function of facts)."""

from __future__ import annotations

from lxdmig.lsm import apparmor_refusal, label_base, loaded_profiles, selinux_refusal

GENERATED = "lxc-web1_</var/lib/lxc>"
LOADED = {GENERATED, "lxc-container-default-cgns", "/usr/sbin/ntpd"}


def _refusal(profile: str, label: str = "", *, enabled: bool = True, generator: bool = True) -> str:
    return apparmor_refusal(profile, label, enabled=enabled, loaded=LOADED, generator=generator)


def test_a_host_with_apparmor_takes_generated_unconfined_and_loaded_profiles() -> None:
    assert _refusal("generated", GENERATED) == ""
    assert _refusal("unconfined") == ""
    assert _refusal("lxc-container-default-cgns") == ""
    assert _refusal("", "lxc-container-default-cgns") == ""  # unset: the label the tasks had
    assert _refusal("", "") == ""  # unset and unconfined on the source: nothing to apply


def test_a_profile_the_host_does_not_have_is_refused_with_its_name() -> None:
    assert "no AppArmor profile of that name is loaded here" in _refusal("my-named-profile")
    assert "lxc-custom" in _refusal("", "lxc-custom") and "not loaded here" in _refusal("", "lxc-custom")
    assert "apparmor_parser" in _refusal("generated", generator=False)


def test_a_host_without_apparmor_refuses_any_profile_criu_would_have_to_apply() -> None:
    for profile in ("generated", "unconfined", "lxc-container-default-cgns"):
        assert "kernel has no AppArmor" in _refusal(profile, enabled=False), profile
    assert "kernel has no AppArmor" in _refusal("", GENERATED, enabled=False)
    assert _refusal("", "", enabled=False) == ""


def test_labels_lose_their_mode_and_stacked_namespace() -> None:
    stacked = f"{GENERATED}//&:lxc-web1_<-var-lib-lxc>:unconfined (enforce)\n"
    assert label_base(stacked) == GENERATED
    assert label_base("unconfined\n") == "" and label_base("") == ""
    assert label_base("/usr/sbin/ntpd (complain)") == "/usr/sbin/ntpd"


def test_loaded_profiles_are_the_names_before_the_mode() -> None:
    text = f"{GENERATED} (enforce)\nlxc-container-default-cgns (enforce)\n/usr/sbin/ntpd (complain)\n"
    assert loaded_profiles(text) == LOADED


def test_an_selinux_context_needs_a_host_whose_lsm_is_selinux() -> None:
    context = "system_u:system_r:container_t:s0:c1,c2"
    assert selinux_refusal(context, apparmor=False, selinux=True) == ""
    assert "its LSM is AppArmor" in selinux_refusal(context, apparmor=True, selinux=True)
    assert "no SELinux" in selinux_refusal(context, apparmor=False, selinux=False)
    assert selinux_refusal("", apparmor=True, selinux=False) == ""
