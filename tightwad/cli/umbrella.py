"""``tightwad``: the umbrella command.

``tightwad up`` runs everything on one host; ``tightwad config check FILE`` validates a cluster
file. The seed project's verbs map onto the controller (see ``tightwadctl``).
"""

from __future__ import annotations

import argparse
import sys

from tightwad import __version__
from tightwad.logs import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from tightwad.cli.seed import add_seed_commands
    from tightwad.cli.up import add_up_arguments

    p = argparse.ArgumentParser(
        prog="tightwad",
        description="A drawer of mismatched machines as one OpenAI-compatible endpoint.",
    )
    p.add_argument("--version", action="version", version=f"tightwad {__version__}")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole stack on this host (foreground)")
    add_up_arguments(up)
    cfg = sub.add_parser("config", help="cluster file tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a cluster YAML file")
    check.add_argument(
        "file", nargs="?", help="default: -c, $TIGHTWAD_CONFIG, configs/cluster.yaml"
    )
    add_seed_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "up":
        from tightwad.cli.up import run_up

        return run_up(args)
    if args.command == "config":
        from tightwad.config import check_main

        return check_main([args.file] if args.file else [])
    from tightwad.cli.seed import SEED_COMMANDS, run_seed

    if args.command in SEED_COMMANDS:
        return run_seed(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
