"""The ``dataplane`` command: key tools compatible with ``wg``, and the demo.

Exit status: 0 on success, 1 on a runtime failure, 2 for bad usage or bad input (an
unreadable key, a bad address), reported on stderr in one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dataplane.wireguard.keys import KeyError_, PresharedKey, PrivateKey

log = logging.getLogger("dataplane")


class UsageError(Exception):
    """A user mistake: printed as one line on stderr, exit status 2."""


def cmd_genkey(args: argparse.Namespace) -> int:
    print(PrivateKey.generate().to_base64())
    return 0


def cmd_genpsk(args: argparse.Namespace) -> int:
    print(PresharedKey.generate().to_base64())
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    text = sys.stdin.read()
    try:
        key = PrivateKey.from_base64(text)
    except KeyError_ as e:
        raise UsageError(f"pubkey: {e} (expected a private key on standard input)") from None
    print(key.public_key.to_base64())
    return 0


def _commands() -> dict[str, tuple[str, Callable[[argparse.Namespace], int], Callable | None]]:
    from dataplane import demo, interface

    return {
        "genkey": ("print a new private key (like `wg genkey`)", cmd_genkey, None),
        "genpsk": ("print a new preshared key (like `wg genpsk`)", cmd_genpsk, None),
        "pubkey": ("read a private key on stdin, print its public key", cmd_pubkey, None),
        "demo": (demo.DESCRIPTION, demo.main, demo.add_arguments),
        "up": (interface.UP_HELP, interface.cmd_up, interface.add_up_arguments),
        "down": (interface.DOWN_HELP, interface.cmd_down, interface.add_down_arguments),
        "show": (interface.SHOW_HELP, interface.cmd_show, interface.add_show_arguments),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataplane", description="A WireGuard data plane for Python."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (helptext, func, add_args) in _commands().items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging"
        )
        if add_args is not None:
            add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
