"""The helper's answers before a migration: a stranger redeeming a trust token, and a trusted peer's
probe (room, networks, what hardened mode would refuse in the container it means to send)."""

from __future__ import annotations

import logging
import os
import re

from cryptography import x509

from lxdmig import lsm
from lxdmig.errors import BackendError
from lxdmig.helper.connection import Handlers
from lxdmig.lxc_definition import Reader
from lxdmig.protocol import messages
from lxdmig.protocol.messages import RemoteBadRequest, RemoteUntrusted
from lxdmig.tokens import TokenError

log = logging.getLogger(__name__)

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class Probing(Handlers):
    def trust_redeem(self, request: messages.TrustRedeem) -> messages.Trusted:
        cert_pem = request.certificate.encode()
        try:
            x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise RemoteBadRequest("'certificate' is not a PEM certificate") from None
        try:
            name = self.state.tokens.redeem(request.secret)
        except TokenError as e:
            raise RemoteUntrusted(str(e)) from None
        fp = self.state.trust.add(name, cert_pem)
        self.state.reload()
        log.warning("%s: trust token for %r redeemed; certificate %s is now trusted", self.conn.peer, name, fp)
        return messages.Trusted(name=name, fingerprint=fp)

    def probe(self, request: messages.Probe) -> messages.ProbeResult:
        container = request.container
        return messages.ProbeResult(
            free_bytes=self.state.free_bytes(),
            container_exists=bool(container) and (self.state.container_exists(container)
                                                  or self.state.path_taken(container) is not None),
            networks={n: bool(_IFNAME_RE.match(n)) and os.path.exists(f"/sys/class/net/{n}")
                      for n in request.networks},
            lxcpath=str(self.state.config.lxcpath),
            hardened=self.state.config.hardened,
            plain_pages=self.state.config.plain_pages,
            lxd_allow_keys=self.state.lxd_allowed(),
            lsm_refusal=lsm.refusal_here(request.apparmor_profile, request.apparmor_label, request.selinux_context),
            config_refusals=self._config_refusals(request),
        )

    def _config_refusals(self, request: messages.Probe) -> tuple[str, ...]:
        """What hardened mode would refuse in the LXC config the source sent with its probe."""
        if not (self.state.config.hardened and request.lxc_config):
            return ()
        try:
            own = self.state.backend.container_dir(request.container)
        except BackendError as e:
            return (str(e),)
        reader = Reader(self.state.allotment(), own_dir=str(own), source_dir=request.source_dir)
        return tuple(reader.judge(request.lxc_config).refusals[:64])
