"""TLS and mutual TLS on ``tls://`` (TCP), with certificates made by the test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cellnet import Cell
from cellnet.errors import ConfigError, ConnectError
from cellnet.pki import CertificateAuthority
from cellnet.tls import TlsSettings


@dataclass
class Kit:
    ca: Path
    server: TlsSettings
    site: TlsSettings
    """site-1's certificate, from the right CA."""
    rogue_site: TlsSettings
    """A certificate from another CA."""
    wrong_host_server: TlsSettings
    """A server certificate for another host name only."""
    trusts_rogue: TlsSettings
    """A client that trusts only the other CA."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    folder = tmp_path_factory.mktemp("kit")
    ca = CertificateAuthority.create("test federation")
    rogue = CertificateAuthority.create("someone else")
    ca_pem = ca.write(folder / "ca.pem")
    rogue_pem = rogue.write(folder / "rogue-ca.pem")

    def settings(
        stem: str, authority: CertificateAuthority, name: str, hosts: list[str], ca_path: Path
    ) -> TlsSettings:
        # Each kit member gets files of its own: several share a cell name.
        cert, key = authority.issue(name, hosts).write(folder, stem)
        return TlsSettings(ca_path, cert, key)

    return Kit(
        ca=ca_pem,
        server=settings("server", ca, "server", ["127.0.0.1", "localhost"], ca_pem),
        site=settings("site", ca, "site-1", [], ca_pem),
        rogue_site=settings("rogue-site", rogue, "site-1", [], ca_pem),
        wrong_host_server=settings("wrong-host", ca, "server", ["server.example.org"], ca_pem),
        trusts_rogue=TlsSettings(rogue_pem),
    )


async def _server(tls: TlsSettings) -> Cell:
    return await Cell("server", listen=["tls://127.0.0.1:0"], tls=tls).start()


async def test_mutual_tls_request_and_route(kit: Kit) -> None:
    async with await _server(kit.server) as server:
        url = server.listen_addresses[0]
        assert url.startswith("tls://127.0.0.1:")
        async with Cell("site-1", parent=url, tls=kit.site) as site1, Cell(
            "site-2", parent=url, tls=kit.site
        ) as site2:
            await site1.start(wait_parent=5)
            await site2.start(wait_parent=5)
            reply = await site1.request("site-2", "cellnet", "echo", b"x" * 70_000, timeout=5)
            assert reply.payload == b"x" * 70_000
            assert reply.meta["route"] == ["site-1", "server", "site-2"]
            assert reply.hops == ("site-2", "server", "site-1")


async def test_server_only_tls_accepts_anonymous_clients(kit: Kit) -> None:
    server_tls = TlsSettings(None, kit.server.cert, kit.server.key)
    async with await _server(server_tls) as server:
        async with Cell("site-1", parent=server.listen_addresses, tls=TlsSettings(kit.ca)) as site:
            await site.start(wait_parent=5)
            reply = await site.request("server", "cellnet", "echo", b"hi", timeout=5)
            assert reply.payload == b"hi"


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("no_cert", "a client without a certificate"),
        ("rogue_site", "a client certificate from another CA"),
        ("trusts_rogue", "a server certificate the client does not trust"),
        ("plain", "a plaintext client"),
    ],
)
async def test_refused_clients_leave_the_server_working(kit: Kit, client: str, why: str) -> None:
    async with await _server(kit.server) as server:
        url = server.listen_addresses[0]
        tls = {
            "no_cert": TlsSettings(kit.ca),
            "rogue_site": kit.rogue_site,
            "trusts_rogue": kit.trusts_rogue,
            "plain": None,
        }[client]
        parent = url.replace("tls://", "tcp://") if client == "plain" else url
        bad = Cell("site-1", parent=parent, tls=tls)
        with pytest.raises(ConnectError):
            await bad.start(wait_parent=2)
        await bad.aclose()
        assert server.peers == [], why
        # The listener still serves a good client afterwards.
        async with Cell("site-2", parent=url, tls=kit.site) as good:
            await good.start(wait_parent=5)
            assert (await good.request("server", "cellnet", "echo", b"ok", timeout=5)).payload == b"ok"


async def test_server_certificate_must_name_the_host(kit: Kit) -> None:
    async with await _server(kit.wrong_host_server) as server:
        site = Cell("site-1", parent=server.listen_addresses, tls=kit.site)
        with pytest.raises(ConnectError, match="(?i)certificate"):
            await site.start(wait_parent=2)
        await site.aclose()


async def test_tls_listener_without_certificate_is_a_config_error(kit: Kit) -> None:
    cell = Cell("server", listen=["tls://127.0.0.1:0"], tls=TlsSettings(kit.ca))
    with pytest.raises(ConfigError, match="needs tls.cert and tls.key"):
        await cell.start()
    await cell.aclose()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls.ca: .*nope.pem: no such file"):
        TlsSettings(tmp_path / "nope.pem").client_context()
