"""``make demo``: the test bed, a running workload container, CRIU round trip."""

from __future__ import annotations

import sys

from lxdmig import capabilities
from lxdmig.errors import CommandError
from lxdmig.testbed import bed, containers, helpers, hosts
from lxdmig.testbed.layout import Host, all_hosts

NAME = "demo"


def main() -> int:
    try:
        return _demo()
    except (hosts.TestbedError, CommandError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


def _demo() -> int:
    a = Host("a")
    print("==> bringing up test hosts a and b")
    bed.up()
    for h in all_hosts():
        print(f"    host {h.name}: netns {h.netns}, address {h.address}, lxcpath {h.lxcpath}")
    caps = capabilities.probe()
    print(f"==> this machine: kernel {caps.kernel_release}, CRIU {caps.criu_version}; "
          f"modes as source: {', '.join(caps.source_modes())}")
    for problem in caps.problems():
        print(f"    note: {problem}")
    containers.destroy(a, NAME)
    print(f"==> starting container {NAME} on host a (64 MiB workload, 4 MiB/s dirtied)")
    addr = containers.create(a, NAME, containers.WorkloadSpec(memory_mib=64, dirty_rate_mib_s=4))
    containers.wait_for_full_verification(a, NAME)
    print(f"    {NAME} runs at {addr}")
    print(f"==> preflight on host a: lxdmig check b {NAME} (helpers run on both hosts, remotes paired)")
    check = containers.host_command(a, helpers.lxdmig_argv("check", "b", NAME), check=False)
    print("    " + check.stdout.strip().replace("\n", "\n    "))
    print("==> checkpointing it with CRIU (lxc-checkpoint -s) and restoring it on host a")
    result = containers.checkpoint_restore_in_place(a, NAME)
    final = containers.wait_for_full_verification(a, NAME)
    before, after = result.before, result.after
    same = before["incarnation"] == after["incarnation"] and before["pid"] == after["pid"]
    print()
    print("report")
    print(f"  same process after restore:   {'yes' if same else 'NO'} (pid {after['pid']}, "
          f"incarnation {after['incarnation']})")
    print(f"  counter:                      {before['counter']} before -> {final['counter']} now")
    print(f"  memory checksum after restore: {'intact' if final['checksum_ok'] else 'CORRUPTED'} "
          f"({final['verified_passes']} verification passes)")
    print(f"  dump {result.dump_s * 1000:.0f} ms, restore {result.restore_s * 1000:.0f} ms; "
          f"longest pause the workload saw: {float(str(final['max_gap_ms'])):.0f} ms")
    print()
    print("The container keeps running on host a. Try:")
    print(f"  scripts/testbed workload a {NAME}")
    print(f"  scripts/testbed attach a {NAME} -- ps")
    print("  scripts/testbed down      # remove the test hosts")
    ok = same and final["checksum_ok"] is True
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
