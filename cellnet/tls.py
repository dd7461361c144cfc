"""TLS and mutual TLS settings, shared by every driver.

A cell's ``[tls]`` table names three PEM files; relative paths resolve from
the config file's folder::

    [tls]
    ca = "kit/ca.pem"        # the CA that signed the peers' certificates
    cert = "kit/site-1.pem"  # this cell's certificate (chain)
    key = "kit/site-1.key"   # its private key

Secure URL schemes (``tls://``, ``grpcs://``, ``https://``/``wss://``,
``rediss://``) use them as follows:

======================  ====================================================
listener                needs ``cert`` and ``key``. With ``ca`` it requires
                        every client to present a certificate signed by that
                        CA (mutual TLS); without ``ca`` clients stay
                        anonymous.
dialer                  verifies the server's certificate against ``ca``
                        (the system's trusted CAs when ``ca`` is not set) and
                        checks the URL's host, a name or an IP address,
                        against the certificate's subjectAltName. With
                        ``cert`` and ``key`` it presents its own certificate.
======================  ====================================================

Nothing here reads a file until a context is asked for; errors (a missing
file, a key that does not match its certificate) are
:class:`~cellnet.errors.ConfigError` naming the file. Drivers whose library
wants PEM bytes instead of an :class:`ssl.SSLContext` (gRPC) use
:meth:`TlsSettings.read`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

#: URL schemes that are always encrypted, and the plain scheme each secures
SECURE_SCHEMES: dict[str, str] = {
    "tls": "tcp",
    "grpcs": "grpc",
    "https": "http",
    "wss": "ws",
    "rediss": "redis",
}


def is_secure(scheme: str) -> bool:
    """Whether URLs of ``scheme`` are encrypted."""
    return scheme.lower() in SECURE_SCHEMES


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where a cell's CA, certificate and key are (PEM files)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("tls: cert and key go together; got only one of them")

    @property
    def mutual(self) -> bool:
        """A listener with a CA verifies its clients' certificates."""
        return self.ca is not None

    def server_context(self) -> ssl.SSLContext:
        """A context for a listener; requires ``cert`` and ``key``."""
        if self.cert is None or self.key is None:
            raise ConfigError("tls: a TLS listener needs tls.cert and tls.key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(ctx)
        if self.ca is not None:
            self._load_ca(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A context for a dialer: verifies the server, checks its name."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca is not None:
            self._load_ca(ctx)
        if self.cert is not None:
            self._load_chain(ctx)
        return ctx

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The PEM bytes of (ca, cert, key); ``None`` for what is not set."""
        return tuple(  # type: ignore[return-value]
            None if path is None else _read(path) for path in (self.ca, self.cert, self.key)
        )

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        assert self.cert is not None and self.key is not None
        _check_file(self.cert, "tls.cert")
        _check_file(self.key, "tls.key")
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"tls: cannot use {self.cert} with {self.key}: {exc.reason or exc}"
            ) from None

    def _load_ca(self, ctx: ssl.SSLContext) -> None:
        assert self.ca is not None
        _check_file(self.ca, "tls.ca")
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls.ca: {self.ca} is not a PEM certificate: {exc.reason or exc}") from None


def _check_file(path: Path, key: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {path}: {exc.strerror or exc}") from None


__all__ = ["SECURE_SCHEMES", "TlsSettings", "is_secure"]
