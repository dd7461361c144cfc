"""The one error tree of cellnet.

Every exception that leaves a public cellnet API is a :class:`CellnetError`.
Drivers translate their library's exceptions at the edge, so nothing foreign
leaks out. The tree is split by what the caller can do about it::

    CellnetError
    ├── ConfigError               fix the input: bad config file, bad value
    │   └── InvalidCellName       a cell name that breaks the naming rules
    ├── DriverError               fix the install or the URL
    │   ├── UnknownScheme         no driver for this URL scheme
    │   └── DriverUnavailable     the driver's optional extra is not installed
    ├── MessageTooLarge           fix the input: payload over ``max_message``
    ├── ProtocolError             the peer sent something we cannot accept
    │   ├── FrameError            malformed bytes on the wire (codec)
    │   │   └── FrameTooLarge     a frame or header over the configured limit
    │   ├── HandshakeError        a peer failed the link handshake
    │   └── NameInUse             a peer claimed a name that is already linked
    ├── TransportError            retry later: the network failed
    │   ├── ConnectError          could not dial
    │   ├── LinkClosed            the link was closed by us
    │   └── LinkBroken            the link was broken by the peer or network
    ├── RequestError              a request did not get a normal reply
    │   ├── RequestTimeout        no reply within the time budget
    │   ├── Unreachable           no route to the destination, or it left
    │   ├── LinkLost              the link the request travelled on died
    │   ├── NoHandler             the destination has no handler for it
    │   ├── RemoteError           the remote handler raised
    │   └── TransferFailed        a streamed payload could not be completed
    │       └── ChecksumMismatch  its content hash did not match
    └── CellClosed                the cell was closed; no more traffic
"""

from __future__ import annotations


class CellnetError(Exception):
    """Base class of every error raised by cellnet."""


# -- fix the input ----------------------------------------------------------


class ConfigError(CellnetError, ValueError):
    """A configuration value is wrong. The message names the source, key and
    what was expected."""


class InvalidCellName(ConfigError):
    """A cell name breaks the naming rules (see :mod:`cellnet.names`)."""


class DriverError(CellnetError):
    """No usable driver for a URL."""


class UnknownScheme(DriverError, ValueError):
    """No driver is registered for the URL's scheme."""


class DriverUnavailable(DriverError, ImportError):
    """The driver exists but its optional dependencies are not installed."""


class MessageTooLarge(CellnetError, ValueError):
    """A message is larger than the ``max_message`` limit of a hop."""

    def __init__(self, size: int, limit: int, where: str = "sender") -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit} bytes (at {where})"
        )
        self.size = size
        self.limit = limit
        self.where = where


# -- the peer misbehaved ----------------------------------------------------


class ProtocolError(CellnetError):
    """The peer sent something that breaks the protocol; its link is closed."""


class FrameError(ProtocolError):
    """Malformed frame bytes: bad magic, version, kind, lengths or header."""


class FrameTooLarge(FrameError):
    """A frame declares a header or payload larger than the configured limit."""


class HandshakeError(ProtocolError):
    """The link handshake failed (wrong first frame, bad name, bad version)."""


class NameInUse(HandshakeError):
    """The peer claimed a cell name that already has a live link."""


# -- retry later ------------------------------------------------------------


class TransportError(CellnetError):
    """The network failed; retrying later may succeed."""


class ConnectError(TransportError):
    """A dial failed (refused, unreachable, timed out)."""


class LinkClosed(TransportError):
    """The link was closed by this side; it cannot be used any more."""


class LinkBroken(TransportError):
    """The link was broken by the peer or the network."""


# -- requests ---------------------------------------------------------------


class RequestError(CellnetError):
    """A request did not complete with a normal reply."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived within the request's time budget."""


class Unreachable(RequestError):
    """No route to the destination, or a hop on the way lost it."""


class LinkLost(RequestError):
    """The link a pending request depended on died before the reply came."""


class NoHandler(RequestError):
    """The destination cell has no handler for the channel and topic."""


class RemoteError(RequestError):
    """The remote handler raised; the message carries its error text."""


class TransferFailed(RequestError):
    """A payload streamed in chunks could not be completed: the other end
    went away and the transfer did not resume within its time budget, the
    receiver refused it, or the stream was cut. Raised on both ends; a file
    being received is removed, never left looking complete."""


class ChecksumMismatch(TransferFailed):
    """A streamed payload arrived whole but its content hash differs from
    the one the sender computed."""


class CellClosed(CellnetError):
    """The cell has been closed."""


__all__ = [
    "CellClosed",
    "CellnetError",
    "ChecksumMismatch",
    "ConfigError",
    "ConnectError",
    "DriverError",
    "DriverUnavailable",
    "FrameError",
    "FrameTooLarge",
    "HandshakeError",
    "InvalidCellName",
    "LinkBroken",
    "LinkClosed",
    "LinkLost",
    "MessageTooLarge",
    "NameInUse",
    "NoHandler",
    "ProtocolError",
    "RemoteError",
    "RequestError",
    "RequestTimeout",
    "TransferFailed",
    "TransportError",
    "UnknownScheme",
    "Unreachable",
]
