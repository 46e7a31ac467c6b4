"""``make demo``: the test bed, a running workload container, moved a -> b -> a with lxdmig move."""

from __future__ import annotations

import sys

from lxdmig import capabilities
from lxdmig.errors import CommandError
from testbed import bed, containers, helpers, hosts
from testbed.layout import Host, all_hosts

NAME = "demo"


def main() -> int:
    try:
        return _demo()
    except (hosts.TestbedError, CommandError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


def _demo() -> int:
    a, b = Host("a"), Host("b")
    print("==> bringing up test hosts a and b")
    bed.up()
    for h in all_hosts():
        print(f"    host {h.name}: netns {h.netns}, address {h.address}, lxcpath {h.lxcpath}")
    caps = capabilities.probe()
    print(f"==> this machine: kernel {caps.kernel_release}, CRIU {caps.criu_version}; "
          f"modes as source: {', '.join(caps.source_modes())}")
    for problem in caps.problems():
        print(f"    note: {problem}")
    for h in all_hosts():
        containers.destroy(h, NAME)
    print(f"==> starting container {NAME} on host a (64 MiB workload, 4 MiB/s dirtied)")
    addr = containers.create(a, NAME, containers.WorkloadSpec(memory_mib=64, dirty_rate_mib_s=4))
    containers.wait_for_full_verification(a, NAME)
    print(f"    {NAME} runs at {addr}")
    print(f"==> preflight on host a: lxdmig check b {NAME} (helpers run on both hosts, remotes paired)")
    check = containers.host_command(a, helpers.lxdmig_argv("check", "b", NAME), check=False)
    print("    " + check.stdout.strip().replace("\n", "\n    "))
    ok = True
    for source, dest in ((a, b), (b, a)):
        before = containers.wait_for_full_verification(source, NAME)
        print(f"==> on host {source.name}: lxdmig move {NAME} {dest.name}:{NAME}   (mode auto: the best this "
              "kernel allows)")
        moved = containers.host_command(source, helpers.lxdmig_argv("move", NAME, f"{dest.name}:{NAME}"),
                                        check=False, timeout=600)
        print("    " + (moved.stderr + moved.stdout).strip().replace("\n", "\n    "))
        if moved.returncode != 0:
            return 1
        after = containers.wait_for_full_verification(dest, NAME)
        same = after["incarnation"] == before["incarnation"] and after["pid"] == before["pid"]
        intact = after["checksum_ok"] is True
        ok = ok and same and intact and NAME not in containers.list_containers(source)
        print(f"    the workload on host {dest.name}: {'same process' if same else 'A NEW PROCESS'} "
              f"(incarnation {after['incarnation']}), counter {before['counter']} -> {after['counter']}, memory "
              f"{'intact' if intact else 'CORRUPTED'} after a full check, longest pause it ever saw "
              f"{float(str(after['max_gap_ms'])):.0f} ms; on host {source.name}: "
              f"{'gone' if NAME not in containers.list_containers(source) else 'STILL THERE'}")
    print()
    print(f"{NAME} went a -> b -> a and runs on host a again. Try:")
    print(f"  scripts/testbed exec a -- lxdmig move {NAME} b:{NAME} --mode stop-copy")
    print(f"  scripts/testbed workload b {NAME}")
    print("  scripts/testbed down      # remove the test hosts")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
