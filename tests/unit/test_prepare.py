"""lxdmig prepare's plan: what it changes, decided from what the preflight found (pure)."""

from __future__ import annotations

from lxdmig.prepare import DROPIN, DROPIN_SETTINGS, DROPIN_TEXT, plan, undo_plan


def test_a_stock_systemd_container_gets_the_dropin_and_its_sandboxed_services_restarted() -> None:
    changes = plan(systemd=True, dropin_present=False, nested_units=["redis-server.service", "systemd-logind.service"])
    assert [c.what for c in changes] == [
        f"write /{DROPIN} (systemd drop-in for every service: no namespaces of their own)",
        "systemctl daemon-reload", "systemctl restart redis-server.service", "systemctl restart systemd-logind.service"]
    assert all(c.why for c in changes)


def test_nothing_to_do_once_prepared_and_restarts_only_what_still_runs_nested() -> None:
    assert plan(systemd=True, dropin_present=True, nested_units=[]) == []
    assert [c.what for c in plan(systemd=True, dropin_present=True, nested_units=["a.service"])] == [
        "systemctl daemon-reload", "systemctl restart a.service"]
    assert plan(systemd=False, dropin_present=False, nested_units=[]) == []


def test_undo_removes_only_what_prepare_wrote() -> None:
    assert [c.what for c in undo_plan(dropin_present=True)] == [f"remove /{DROPIN}", "systemctl daemon-reload"]
    assert undo_plan(dropin_present=False) == []


def test_the_dropin_turns_off_every_namespace_setting() -> None:
    assert DROPIN_TEXT.splitlines()[3] == "[Service]"
    for setting in ("PrivateUsers=no", "ProtectHostname=no", "PrivateIPC=no", "PrivateNetwork=no", "PrivateTmp=no",
                    "PrivateDevices=no", "ProtectSystem=no", "ReadWritePaths="):
        assert setting in DROPIN_SETTINGS and f"\n{setting}\n" in DROPIN_TEXT
