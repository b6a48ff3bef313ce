"""`storeplane loyalty verify`: check the points ledger's invariants over a loyalty database, at any time (each
balance is the sum of its entries and follows from them entry by entry, held points are the active holds, lots hold
exactly the positive balance, no lot expired twice). Exit 0 when sound, 1 with every problem listed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `loyalty` and its subcommands on the `storeplane` parser."""
    loyalty = sub.add_parser("loyalty", parents=list(parents), help="operate the loyalty service's data")
    inner = loyalty.add_subparsers(dest="loyalty_command", required=True)
    verify = inner.add_parser("verify", help="check that every balance is the sum of its ledger (read-only)")
    verify.add_argument(
        "--database-url",
        default="",
        help="the loyalty database (default: DATABASE_URL_LOYALTY, else POSTGRES_URL's storeplane_loyalty, "
        "else DATA_DIR/loyalty.db)",
    )
    verify.add_argument("--max-problems", type=int, default=50, help="problems printed at most")
    verify.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from loyalty.verify import verify
    from storeplane_cli.stack import database_url_for

    url = args.database_url or database_url_for("loyalty", os.environ)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # one snapshot for every query of the check
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                found = verify(conn)
    finally:
        engine.dispose()
    print(f"loyalty ledger: {found.accounts} accounts, {found.entries} entries checked")
    if found.ok:
        print("sound: every balance is the sum of its entries")
        return 0
    for problem in found.problems[: args.max_problems]:
        print(f"  {problem}", file=sys.stderr)
    hidden = len(found.problems) - args.max_problems
    if hidden > 0:
        print(f"  ... and {hidden} more", file=sys.stderr)
    print(f"NOT sound: {len(found.problems)} problems", file=sys.stderr)
    return 1
