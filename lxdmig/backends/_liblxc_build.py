"""Build script of the cffi binding of liblxc's ``migrate()`` (``lxdmig.backends._liblxc``).

setup.py names it in ``cffi_modules``: the binding is compiled when lxdmig is
built or installed (``pip install -e .``, the RPM's build), against lxc-dev
(lxc-devel), so a host needs neither gcc nor the headers to run it.
"""

from __future__ import annotations

import cffi

CDEF = """
struct migrate_opts {
    char *directory;
    bool verbose;
    bool stop;
    char *predump_dir;
    char *pageserver_address;
    char *pageserver_port;
    bool preserves_inodes;
    char *action_script;
    bool disable_skip_in_flight;
    uint64_t ghost_limit;
    uint64_t features_to_check;
};
struct lxc_container {
    bool (*load_config)(struct lxc_container *c, const char *alt_file);
    int (*get_config_item)(struct lxc_container *c, const char *key, char *retv, int inlen);
    int (*migrate)(struct lxc_container *c, unsigned int cmd, struct migrate_opts *opts, unsigned int size);
    ...;
};
struct lxc_container *lxc_container_new(const char *name, const char *configpath);
int lxc_container_put(struct lxc_container *c);
enum { MIGRATE_PRE_DUMP, MIGRATE_DUMP, MIGRATE_RESTORE, MIGRATE_FEATURE_CHECK };
#define FEATURE_MEM_TRACK ...
#define FEATURE_LAZY_PAGES ...
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
ffi.set_source("lxdmig.backends._liblxc", "#include <lxc/lxccontainer.h>", libraries=["lxc"])

if __name__ == "__main__":
    ffi.compile(verbose=True)
