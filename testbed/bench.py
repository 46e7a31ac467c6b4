"""``benchmarks/run`` (``make bench``): lxdmig's downtime, time and bytes, beside the baselines.

In the test bed, for each memory size, dirty rate and mode this kernel can
do, a fresh container running the workload is moved a -> b, and the same
container setup is moved by each baseline in the same run: a hand-made
stop-and-copy (what LXD used to do: ``lxc-checkpoint -s``, copy, ``-r``),
raw CRIU post-copy by hand (the floor for post-copy), and, on LXD
instances, LXD 5.0's own ``lxc move`` beside lxdmig's move of the same
kind of instance (on Incus instances, ``incus move``). Downtime is the longest pause the workload itself saw
(it ticks every 10 ms and records its longest gap), never lxdmig's own
figure, which is kept beside it. ``--vm`` adds pre-copy and hybrid rows
from the soft-dirty VM (software emulation: compare ratios within it).

Results: ``benchmarks/results/bench-TIME.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lxdmig import capabilities
from testbed import REPO, bed, containers, helpers, lxd
from testbed.bench_report import (
    CRIU_POST_COPY,
    HAND_STOP_COPY,
    INCUS_MOVE,
    LXD_MOVE,
    ON_DAEMON,
    PLAIN,
    Sample,
    markdown,
    plot,
    summarise,
    targets,
    write_json,
)
from testbed.containers import WorkloadSpec, host_argv, host_command
from testbed.layout import Host

A, B = Host("a"), Host("b")
MOVE_TIMEOUT = 1800.0
VERIFY_TIMEOUT = 180.0
HAND_PORT = 27400
LAZY_PORT = 27410
RESULTS = REPO / "benchmarks" / "results"
_names = iter(range(10**6))
_RUN = os.getpid() % 100000  # names unique to this run, whatever an interrupted run left


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gap(before: dict[str, object], after: dict[str, object]) -> float | None:
    """The pause the move caused, as the workload saw it (None: no longer than its longest before)."""
    gap = float(str(after["max_gap_ms"]))
    return round(gap, 1) if gap > float(str(before["max_gap_ms"])) else None


def _same_process(before: dict[str, object], after: dict[str, object]) -> bool:
    return (after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
            and int(str(after["counter"])) > int(str(before["counter"])))


def _hand(host: Host, *args: str, timeout: float = MOVE_TIMEOUT) -> str:
    return host_command(host, [sys.executable, "-m", "testbed.handmove", *args], timeout=timeout).stdout


def _copy(src: Path, dst_host: Host, dst: Path, port: int = HAND_PORT) -> int:
    """Stream a directory from host a to ``dst`` on ``dst_host`` (tar over one TCP connection)."""
    receiver = subprocess.Popen(host_argv(dst_host, sys.executable, "-m", "testbed.handmove", "receive",
                                          str(dst), str(dst_host.address), str(port)),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "LISTENING":
            raise RuntimeError("the receiver did not start")
        sent = int(_hand(A, "send", str(src), str(dst_host.address), str(port)).split()[-1])
        if receiver.wait(MOVE_TIMEOUT) != 0:
            raise RuntimeError("the receiver failed")
        return sent
    finally:
        if receiver.poll() is None:
            receiver.kill()


@contextmanager
def _lxc_container(spec: WorkloadSpec) -> Iterator[str]:
    name = f"bench{_RUN}-{next(_names)}"
    # Privileged: the hand-made baselines restore with plain lxc-checkpoint, which cannot create a
    # veth pair across user namespaces on current kernels, and every row moves the same kind.
    with containers.removed_after(name, A, B):
        containers.create(A, name, spec, privileged=True)
        yield name


def _verified(host: Host, name: str) -> dict[str, object]:
    return containers.wait_for_full_verification(host, name, timeout=VERIFY_TIMEOUT)


def run_lxdmig(spec: WorkloadSpec, mode: str, plain: bool = False) -> Sample:
    with _lxc_container(spec) as name:
        if plain:
            return _lxdmig_move(name, spec, mode, PLAIN, ["--page-transport", "plain"])
        return _lxdmig_move(name, spec, mode, "lxdmig", [])


def _lxdmig_move(name: str, spec: WorkloadSpec, mode: str, subject: str, extra: list[str]) -> Sample:
    before = _verified(A, name)
    with helpers.allowing_privileged(B):  # (the same privileged containers as the hand-made moves)
        cpu, start = _cpu_of_children(), time.monotonic()
        result = host_command(A, helpers.lxdmig_argv("move", name, f"b:{name}", "--json", "--mode", mode, *extra),
                              check=False, timeout=MOVE_TIMEOUT)
        total, cpu = time.monotonic() - start, _cpu_of_children() - cpu
    if result.returncode != 0:
        return Sample("host", subject, mode, spec.memory_mib, spec.dirty_rate_mib_s, False, None, total,
                      note=result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed")
    report = json.loads(result.stdout)
    after = _verified(B, name)
    dump_s = float(report.get("final_dump_s") or 0)
    transfer = (int(report["final_pages_written"]) * 4096 / dump_s / 1e6
                if report["mode"] == "stop-copy" and dump_s > 0 else None)
    lazy_s = float(report.get("lazy_transfer_s") or 0)
    lazy = int(report.get("final_pages_lazy") or 0) * 4096 / lazy_s / 1e6 if lazy_s > 0 else None
    return Sample("host", subject, report["mode"], spec.memory_mib, spec.dirty_rate_mib_s,
                  _same_process(before, after), _gap(before, after), round(total, 3), int(report["bytes_sent"]),
                  len(report["rounds"]), round(cpu, 3), float(report["downtime_ms"]), transfer, lazy_mb_s=lazy)


def _adopt(name: str) -> None:
    config = B.lxcpath / name / "config"
    config.write_text(config.read_text().replace(str(A.lxcpath / name), str(B.lxcpath / name)))


def run_hand_stop_copy(spec: WorkloadSpec) -> Sample:
    """What LXD used to do: copy while running, checkpoint and stop, copy the images and again the files, restore."""
    with _lxc_container(spec) as name:
        before = _verified(A, name)
        images_a, images_b = A.storage / f"hand-{name}", B.storage / f"hand-{name}"
        _remove_images(images_a, images_b)
        start = time.monotonic()
        sent = _copy(A.lxcpath / name, B, B.lxcpath / name)
        host_command(A, ["lxc-checkpoint", "-P", str(A.lxcpath), "-n", name, "-s", "-D", str(images_a)],
                     timeout=MOVE_TIMEOUT, output_file=A.storage / f"hand-{name}.out")
        sent += _copy(images_a, B, images_b) + _copy(A.lxcpath / name, B, B.lxcpath / name)
        _adopt(name)
        host_command(B, ["lxc-checkpoint", "-P", str(B.lxcpath), "-n", name, "-r", "-D", str(images_b)],
                     timeout=MOVE_TIMEOUT, output_file=B.storage / f"hand-{name}.out")
        total = time.monotonic() - start
        after = _verified(B, name)
        _remove_images(images_a, images_b)
        return Sample("host", HAND_STOP_COPY, "stop-copy", spec.memory_mib, spec.dirty_rate_mib_s,
                      _same_process(before, after), _gap(before, after), round(total, 3), sent)


def run_criu_post_copy(spec: WorkloadSpec) -> Sample:
    """Raw CRIU post-copy by hand: files first, lazy dump, images over, lazy-pages + restore on b."""
    with _lxc_container(spec) as name:
        before = _verified(A, name)
        images_a, images_b = A.storage / f"lazy-{name}", B.storage / f"lazy-{name}"
        _remove_images(images_a, images_b)
        start = time.monotonic()
        sent = _copy(A.lxcpath / name, B, B.lxcpath / name)
        dump = subprocess.Popen(host_argv(A, sys.executable, "-m", "testbed.handmove", "lazy-dump",
                                          str(A.lxcpath), name, str(images_a), str(A.address), str(LAZY_PORT)),
                                stdout=subprocess.PIPE, text=True)
        try:
            assert dump.stdout is not None
            if dump.stdout.readline().strip() != "READY":
                raise RuntimeError("the lazy dump did not start serving pages")
            sent += _copy(images_a, B, images_b)
            _adopt(name)
            _hand(B, "lazy-restore", str(B.lxcpath), name, str(images_b), str(A.address), str(LAZY_PORT))
            dump.wait(MOVE_TIMEOUT)
        finally:
            if dump.poll() is None:
                dump.kill()
        total = time.monotonic() - start
        after = _verified(B, name)
        _remove_images(images_a, images_b)
        return Sample("host", CRIU_POST_COPY, "post-copy", spec.memory_mib, spec.dirty_rate_mib_s,
                      _same_process(before, after), _gap(before, after), round(total, 3),
                      sent + spec.memory_mib * 2**20)


def _remove_images(*dirs: Path) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


# --- LXD and Incus instances ------------------------------------------------------

OWN_MOVE = {lxd.LXD.name: LXD_MOVE, lxd.INCUS.name: INCUS_MOVE}


def _client_env(host: Host, kind: lxd.Kind) -> list[str]:
    """The daemon's command-line client, with a client configuration of the bench's own."""
    conf = "LXD_CONF" if kind is lxd.LXD else "INCUS_CONF"
    return ["env", f"{kind.dir_env}={lxd.lxd_dir(host, kind)}", f"{conf}={host.root / f'{kind.cli}-client'}"]


def setup_daemon(kind: lxd.Kind) -> None:
    """Both daemons of ``kind``, with host a's client (lxc, incus) and lxdmig trusted by b's."""
    for host in (A, B):
        lxd.start(host, kind)
    # A fresh client identity each run: the daemon refuses a token for a certificate it already trusts.
    shutil.rmtree(A.root / f"{kind.cli}-client", ignore_errors=True)
    token = lxd.trust_token(B, f"bench-{kind.cli}-{int(time.time())}", kind)
    # The client takes the token in place of the address (it names the address and fingerprint).
    host_command(A, [*_client_env(A, kind), kind.cli, "remote", "add", "b", token])
    token = lxd.trust_token(B, f"bench-lxdmig-{int(time.time())}", kind)
    host_command(A, helpers.lxdmig_argv("remote", "add", "b", lxd.https_url(B, kind), f"--{kind.name}", "--replace",
                                        "--accept-certificate", "--token", token))


@contextmanager
def _daemon_instance(spec: WorkloadSpec, kind: lxd.Kind) -> Iterator[str]:
    name = f"bench{kind.name}{_RUN}-{next(_names)}"
    lxd.create(A, name, kind=kind)
    containers.make_rootfs(lxd.rootfs(A, name, kind), name, spec)  # the workload with this size and rate
    host_command(A, [*_client_env(A, kind), kind.cli, "start", name])
    try:
        containers.wait_for_workload(A, name)
        yield name
    finally:
        for host in (A, B):
            lxd.delete(host, name, kind)


def run_daemon_move(spec: WorkloadSpec, kind: lxd.Kind) -> Sample:
    """The daemon's own live move (``lxc move``, ``incus move``), timed from outside."""
    subject, mode = OWN_MOVE[kind.name], f"{kind.name}-live"
    with _daemon_instance(spec, kind) as name:
        before = _verified(A, name)
        start = time.monotonic()
        result = host_command(A, [*_client_env(A, kind), kind.cli, "move", name, f"b:{name}"], check=False,
                              timeout=MOVE_TIMEOUT)
        total = time.monotonic() - start
        # LXD 5.0 often reports "Failed to delete original instance after copying it: Instance is busy
        # running a stop operation" although the move happened: judge by where the workload runs.
        note = result.stderr.strip().splitlines()[-1][:200] if result.returncode != 0 and result.stderr.strip() else ""
        if lxd.state(B, name, kind) != "RUNNING":
            return Sample("host", subject, mode, spec.memory_mib, spec.dirty_rate_mib_s, False, None, total,
                          note=note or "not running on b")
        after = _verified(B, name)
        return Sample("host", subject, mode, spec.memory_mib, spec.dirty_rate_mib_s,
                      _same_process(before, after), _gap(before, after), round(total, 3), note=note)


def run_lxdmig_on_daemon(spec: WorkloadSpec, mode: str, kind: lxd.Kind) -> Sample:
    with _daemon_instance(spec, kind) as name:
        return _lxdmig_move(name, spec, mode, ON_DAEMON[OWN_MOVE[kind.name]], ["--engine", "lxdmig"])


def tcp_mb_s(mib: int = 1024) -> float:
    """A plain TCP stream a -> b, the reference for lxdmig's bulk transfer rate."""
    sink = subprocess.Popen(host_argv(B, sys.executable, "-m", "testbed.handmove", "sink", str(B.address),
                                      str(HAND_PORT)), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        sink.stdout.readline()
        return float(_hand(A, "source", str(B.address), str(HAND_PORT), str(mib)).split()[-1])
    finally:
        sink.wait(60)


# --- the VM rows -----------------------------------------------------------------


def vm_samples() -> list[Sample]:
    """Pre-copy and hybrid (and stop-copy, post-copy to compare with) in the soft-dirty VM."""
    from tests.vm import image

    result = image.run(["tests/vm/guest/bench_in_vm.py", "-s"], timeout=3600)
    out = []
    for match in re.finditer(r"LXDMIG-BENCH-SAMPLE (\{.*\})\s*$", result.console, re.M):
        out.append(Sample(**json.loads(match.group(1))))
    if not out:
        tail = "\n".join(result.console.splitlines()[-30:])
        raise RuntimeError(f"the VM printed no benchmark samples (exit {result.exit_code}):\n{tail}")
    return out


# --- real system containers ----------------------------------------------------------

REAL_IMAGES = {"debian-12": "Debian 12", "debian-13": "Debian 13"}


def real_subject(image: str) -> str:
    return f"lxdmig, {REAL_IMAGES[image]} system container (pause: the Redis client's longest wait)"


@contextmanager
def _system_container(image: str) -> Iterator[str]:
    name = f"real{_RUN}-{next(_names)}"
    with containers.removed_after(name, A, B):
        containers.create_system(A, name, image)
        host_command(A, helpers.lxdmig_argv("prepare", name), timeout=300)
        yield name


def run_real(mode: str, image: str = "debian-12") -> Sample:
    """A stock Debian container (systemd, redis, postgresql, nginx, openssh; prepared) moved a -> b
    while a Redis client on host b sends INCR every 10 ms over one connection: its longest wait for a
    reply is the downtime; ok means every reply was the previous plus one, on the same connection."""
    with _system_container(image) as name, tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        stop, out = Path(tmp) / "stop", Path(tmp) / "redis.json"
        client = subprocess.Popen(host_argv(B, sys.executable, "-m", "testbed.clients", "redis",
                                            str(containers.container_address(A, name)), "--until", str(stop),
                                            "--out", str(out)))
        try:
            time.sleep(1)
            cpu, start = _cpu_of_children(), time.monotonic()
            result = host_command(A, helpers.lxdmig_argv("move", name, f"b:{name}", "--json", "--mode", mode),
                                  check=False, timeout=MOVE_TIMEOUT)
            total, cpu = time.monotonic() - start, _cpu_of_children() - cpu
            time.sleep(1)
        finally:
            stop.touch()
            client.wait(timeout=60)
        redis = json.loads(out.read_text())
    if result.returncode != 0:
        return Sample("host", real_subject(image), mode, 0, 0.0, False, None, total,
                      note=result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed")
    report = json.loads(result.stdout)
    ok = not redis["error"] and not redis["out_of_step"] and redis["replies"] > 0
    return Sample("host", real_subject(image), report["mode"], 0, 0.0, ok, float(redis["max_wait_ms"]), round(total, 3),
                  int(report["bytes_sent"]), len(report["rounds"]), round(cpu, 3), float(report["downtime_ms"]),
                  note="" if ok else f"redis client: {redis['error'] or redis['out_of_step']}")


# --- the whole run -----------------------------------------------------------------


def matrix(sizes: list[int], rates: list[float], modes: list[str], baselines: list[str], daemons: Sequence[lxd.Kind],
           reps: int, plain_modes: Sequence[str] = ()) -> Iterator[tuple[str, Callable[[], Sample]]]:
    for mib in sizes:
        for rate in rates:
            spec = WorkloadSpec(memory_mib=mib, dirty_rate_mib_s=rate)
            for rep in range(reps):
                label = f"{mib} MiB, {rate:g} MiB/s, #{rep + 1}"
                for mode in modes:
                    yield f"lxdmig {mode}, {label}", lambda s=spec, m=mode: run_lxdmig(s, m)  # type: ignore[misc]
                for mode in plain_modes:
                    yield (f"lxdmig {mode}, plain pages, {label}",
                           lambda s=spec, m=mode: run_lxdmig(s, m, plain=True))  # type: ignore[misc]
                if "stop-copy" in baselines:
                    yield f"{HAND_STOP_COPY}, {label}", lambda s=spec: run_hand_stop_copy(s)  # type: ignore[misc]
                if "criu-post-copy" in baselines:
                    yield f"{CRIU_POST_COPY}, {label}", lambda s=spec: run_criu_post_copy(s)  # type: ignore[misc]
                for kind in daemons:
                    yield f"{OWN_MOVE[kind.name]}, {label}", lambda s=spec, k=kind: run_daemon_move(s, k)  # type: ignore[misc]
                    for mode in ("post-copy", "stop-copy"):
                        yield (f"lxdmig {mode} of an {kind.name} container, {label}",
                               lambda s=spec, m=mode, k=kind: run_lxdmig_on_daemon(s, m, k))  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", default="64,256,1024", help="container memory sizes, MiB (default 64,256,1024)")
    p.add_argument("--rates", default="0,4,64", help="workload dirty rates, MiB/s (default 0,4,64)")
    p.add_argument("--modes", default="", help="lxdmig modes (default: those this kernel can do)")
    p.add_argument("--baselines", default="stop-copy,criu-post-copy",
                   help="hand-made baselines: stop-copy, criu-post-copy (default both)")
    p.add_argument("--lxd", action="store_true", help="add LXD's own lxc move and lxdmig on LXD instances")
    p.add_argument("--incus", action="store_true", help="add Incus's own incus move and lxdmig on Incus instances")
    p.add_argument("--lxd-sizes", default="64",
                   help="memory sizes for the LXD and Incus rows (default 64: their own moves are slow)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each cell (default 3)")
    p.add_argument("--vm", action="store_true", help="add pre-copy and hybrid rows from the soft-dirty VM")
    p.add_argument("--real", action="store_true",
                   help="add stock Debian 12 and 13 system containers moved with a Redis client connected "
                        "(post-copy and stop-copy; --sizes '' for these rows alone)")
    p.add_argument("--plain", action="store_true",
                   help="add lxdmig rows with --page-transport plain (stop-copy and post-copy)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    rates = [float(x) for x in args.rates.split(",") if x]
    caps = capabilities.probe()
    possible = caps.source_modes()  # both test hosts run this kernel
    modes = [m for m in (args.modes.split(",") if args.modes else ["stop-copy", "pre-copy", "post-copy", "hybrid"])
             if m in possible]
    baselines = [b for b in args.baselines.split(",") if b]
    bed.up()
    samples: list[Sample] = []
    tcp = tcp_mb_s()
    _say(f"plain TCP a -> b: {tcp:.0f} MB/s; modes here: {', '.join(modes)}")
    plain_modes = [m for m in ("stop-copy", "post-copy") if m in modes] if args.plain else []
    cells = list(matrix(sizes, rates, modes, baselines, (), args.reps, plain_modes))
    for kind in [k for k, wanted in ((lxd.LXD, args.lxd), (lxd.INCUS, args.incus)) if wanted]:
        try:
            setup_daemon(kind)
            cells += list(matrix([int(x) for x in args.lxd_sizes.split(",")], rates[:1], [], [], (kind,), args.reps))
        except Exception as e:
            _say(f"no {kind.name} rows: setting it up failed: {e}")
    if args.real:
        cells += [(f"lxdmig {mode}, {title} system container, #{rep + 1}",
                   lambda m=mode, i=image: run_real(m, i))  # type: ignore[misc]
                  for image, title in REAL_IMAGES.items()
                  for rep in range(args.reps) for mode in ("post-copy", "stop-copy") if mode in possible]
    for number, (label, run) in enumerate(cells, 1):
        _say(f"[{number}/{len(cells)}] {label}")
        try:
            sample = run()
        except Exception as e:  # one broken cell must not lose the others
            _say(f"    failed: {e}")
            continue
        samples.append(sample)
        _say(f"    downtime {sample.downtime_ms} ms (tool said {sample.reported_downtime_ms}), total "
             f"{sample.total_s:.2f} s, ok={sample.ok}")
    if args.vm:
        _say("the VM rows (pre-copy, hybrid; software emulation, several minutes)")
        samples += vm_samples()
    rows = summarise(samples)
    found = targets(rows, tcp)
    machine = f"{platform.node()}, {platform.machine()}, kernel {platform.release()}, {capabilities.probe().cpu_model}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / time.strftime("bench-%Y%m%d-%H%M%S")
    table = markdown(rows, found, machine=machine, tcp_mb_s=tcp)
    Path(f"{stem}.md").write_text(table)
    write_json(Path(f"{stem}.json"), samples, rows, found, {"machine": machine, "tcp_mb_s": tcp, "argv": sys.argv})
    plotted = plot(Path(f"{stem}.png"), rows)
    print(table)
    print(f"written: {stem}.md, {stem}.json" + (f", {stem}.png" if plotted else " (no plot: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
