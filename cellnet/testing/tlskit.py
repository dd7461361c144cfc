"""Certificates for TLS tests: one call makes a CA, good and bad peers.

::

    from cellnet.testing import make_tls_kit

    kit = make_tls_kit(tmp_path / "tls")
    listener_options = LinkOptions(tls=kit.server)   # mutual TLS: requires client certs
    dialer_options = LinkOptions(tls=kit.client)

Every member of a :class:`TlsKit` is a :class:`~cellnet.tls.TlsSettings`
pointing at PEM files written into the folder (each member has files of its
own). Certificates are made by :mod:`cellnet.pki`, so the ``cryptography``
package must be installed (``pip install "cellnet[tls]"``).

=========================  ===================================================
``server``                 a listener's certificate naming ``hosts`` (default
                           127.0.0.1, ::1 and localhost); trusts the CA, so a
                           listener using it requires client certificates
``client``                 a dialer's certificate from the CA; trusts the CA
``no_cert_client``         trusts the CA, presents no certificate
``foreign_client``         a certificate from another CA; trusts the right CA
``distrusting_client``     a good certificate, but trusts only the other CA
``wrong_host_server``      a server certificate naming only
                           ``server.example.org``
``ip_only_server``         a server certificate whose only host entry is the
                           IP address 127.0.0.1 (besides the DNS entry of the
                           cell name, which :mod:`cellnet.pki` always adds)
=========================  ===================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cellnet.pki import CertificateAuthority
from cellnet.tls import TlsSettings

#: hosts named by the kit's good server certificate
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class TlsKit:
    """A CA and TLS settings for good and bad peers (see the module docs)."""

    folder: Path
    #: the CA certificate every good peer trusts
    ca: Path
    #: another CA's certificate, trusted by no good peer
    other_ca: Path
    server: TlsSettings
    client: TlsSettings
    no_cert_client: TlsSettings
    foreign_client: TlsSettings
    distrusting_client: TlsSettings
    wrong_host_server: TlsSettings
    ip_only_server: TlsSettings


def make_tls_kit(folder: str | Path, hosts: Sequence[str] = LOOPBACK_HOSTS) -> TlsKit:
    """Make a CA, another CA and the certificates of a :class:`TlsKit` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("cellnet test CA")
    other = CertificateAuthority.create("another CA")
    ca_pem = ca.write(folder / "ca.pem")
    other_pem = other.write(folder / "other-ca.pem")

    def member(
        stem: str, authority: CertificateAuthority, name: str, names: Sequence[str], trusts: Path
    ) -> TlsSettings:
        cert, key = authority.issue(name, names).write(folder, stem)
        return TlsSettings(trusts, cert, key)

    return TlsKit(
        folder=folder,
        ca=ca_pem,
        other_ca=other_pem,
        server=member("server", ca, "server", list(hosts), ca_pem),
        client=member("client", ca, "client", [], ca_pem),
        no_cert_client=TlsSettings(ca_pem),
        foreign_client=member("foreign-client", other, "client", [], ca_pem),
        distrusting_client=member("distrusting-client", ca, "client", [], other_pem),
        wrong_host_server=member("wrong-host", ca, "server", ["server.example.org"], ca_pem),
        ip_only_server=member("ip-only", ca, "server", ["127.0.0.1"], ca_pem),
    )


__all__ = ["LOOPBACK_HOSTS", "TlsKit", "make_tls_kit"]
