"""Run as a test host: checkpoint a container with its memory pages streamed to
the remote's CRIU page server (TLS) and its other images uploaded through the
helper protocol; prints one JSON line. Used by test_capture.py.

usage: python send_checkpoint.py REMOTE CONTAINER WORKDIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lxdmig import client, config, criu, proc


def main(remote: str, container: str, work: Path) -> None:
    conf = config.load()
    with client.open_remote(conf, remote) as c:
        mid = c.begin_migration(container)
        port = c.start_page_server(mid)
        peer_cert = work / "peer.crt"
        peer_cert.write_bytes(c.remote.certificate)
        options = ["--page-server", "--address", c.remote.host, "--port", str(port),
                   *criu.tls_options(conf.cert, conf.key, peer_cert)]
        (work / "criu.conf").write_text(criu.config_file_text(options))
        images = work / "images"
        images.mkdir()
        start = time.monotonic()
        proc.run(["lxc-checkpoint", "-P", str(conf.lxcpath), "-n", container, "-D", str(images)], timeout=300,
                 env={"CRIU_CONFIG_FILE": str(work / "criu.conf")}, output_file=work / "lxc-checkpoint.out")
        dump_s = time.monotonic() - start
        uploaded = c.send_tree(mid, images)
        c.end_migration(mid)
    local_pages = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    print(json.dumps({"port": port, "dump_s": dump_s, "uploaded": uploaded, "local_pages_bytes": local_pages}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
