"""The ``cellnet`` command's entry point.

Loading the command line takes a few tenths of a second; a Ctrl-C in that
time ends the command quietly with exit code 130, as it does once a command
runs, instead of with a traceback of whichever import it interrupted.
"""

from __future__ import annotations


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    cli_main()
