"""A small cffi binding of liblxc's ``migrate()``, run as its own process.

python3-lxc has no checkpoint binding, and ``lxc-checkpoint`` cannot
pre-dump, which pre-copy needs (``MIGRATE_PRE_DUMP`` with ``predump_dir``
chaining). The binding, ``lxdmig.backends._liblxc``, is compiled against
lxc-dev when lxdmig is built (``_liblxc_build.py``, setup.py). It runs in a child
process (``python -m lxdmig.backends.liblxc_migrate ...``) so that liblxc's
forks, and the CRIU it starts, inherit nothing of the caller but what
``proc`` passes, and so that CRIU_CONFIG_FILE can be set for it alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

ACTIONS = ("pre-dump", "dump", "restore", "feature-check")


def load() -> ModuleType:
    """The compiled binding (lxdmig.backends._liblxc), built with lxdmig (setup.py, cffi_modules)."""
    try:
        return importlib.import_module("lxdmig.backends._liblxc")
    except ImportError as e:
        raise SystemExit(
            f"liblxc_migrate: the compiled liblxc binding is missing ({e}); it is built when lxdmig is installed:"
            " `pip install -e .` in a checkout (scripts/install-deps does it; needs gcc, lxc-dev and cffi),"
            " or install the lxdmig package built for this architecture"
        ) from e


def migrate(action: str, lxcpath: str, name: str, directory: str, *, predump_dir: str | None = None,
            address: str | None = None, port: int | None = None, stop: bool = False,
            features: int = 0, config: str | None = None) -> int:
    binding = load()
    ffi: Any = binding.ffi
    lib: Any = binding.lib
    keep = []  # C strings must outlive the call

    def cstr(value: str | None) -> Any:
        if value is None:
            return ffi.NULL
        keep.append(ffi.new("char[]", value.encode()))
        return keep[-1]

    container = lib.lxc_container_new(name.encode(), lxcpath.encode())
    if container == ffi.NULL:
        print(f"liblxc: cannot load container {name} in {lxcpath}", file=sys.stderr)
        return 2
    try:
        if config is not None and not container.load_config(container, cstr(config)):
            print(f"liblxc: cannot load the config {config} for {name}", file=sys.stderr)
            return 2
        opts = ffi.new("struct migrate_opts *")
        opts.directory = cstr(directory)
        opts.stop = stop
        opts.predump_dir = cstr(predump_dir)
        opts.pageserver_address = cstr(address)
        opts.pageserver_port = cstr(str(port) if port is not None else None)
        opts.features_to_check = features
        cmd = {"pre-dump": lib.MIGRATE_PRE_DUMP, "dump": lib.MIGRATE_DUMP, "restore": lib.MIGRATE_RESTORE,
               "feature-check": lib.MIGRATE_FEATURE_CHECK}[action]
        return int(container.migrate(container, cmd, opts, ffi.sizeof("struct migrate_opts")))
    finally:
        lib.lxc_container_put(container)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liblxc_migrate", description="liblxc migrate() for lxdmig")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--lxcpath", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--predump-dir", help="previous images, relative to --dir (e.g. ../1)")
    p.add_argument("--address")
    p.add_argument("--port", type=int)
    p.add_argument("--stop", action="store_true")
    p.add_argument("--features", type=int, default=0, help="feature-check: FEATURE_* bits")
    p.add_argument("--config", help="the container's LXC config, if not LXCPATH/NAME/config (e.g. LXD's lxc.conf)")
    args = p.parse_args(argv)
    code = migrate(args.action, args.lxcpath, args.name, args.dir, predump_dir=args.predump_dir,
                   address=args.address, port=args.port, stop=args.stop, features=args.features,
                   config=args.config)
    if code:
        print(f"liblxc migrate({args.action}) of {args.name} returned {code}", file=sys.stderr)
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
