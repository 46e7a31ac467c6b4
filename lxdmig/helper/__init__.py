"""lxdmig-helper: the per-host daemon that receives migrations.

- cli.py: the ``lxdmig-helper`` command (run the daemon, trust tokens, the trust store);
- server.py: listen, authenticate, serve connections, reload, shut down; gate.py: which
  connections it keeps (strangers cost almost nothing);
- session.py: one connection (handshake, dispatch); its requests handled by concern in
  probing.py (trust tokens, the probe), receiving.py (a migration's beginning, image uploads,
  pages, rsync; rsync_server.py: what an rsync receiver may be asked) and restoring.py (the
  restore, commit, status, end, abort); connection.py: what those handlers share;
- state.py: what every connection shares (config, identity, trust, backends, the host's facts);
  migrations.py: the migrations in flight (directories, children, undo);
- criu_daemons.py: CRIU's page servers and lazy-pages daemons.
"""
