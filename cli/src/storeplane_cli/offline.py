"""`storeplane offline list|resubmit`: the offline sales checkout could not record (unknown store, wrong currency,
tenders not covering the recomputed total...) wait in its quarantine, as the store sent them; an operator lists them
and submits each again, as kept or corrected. A resubmitted sale is recorded like an upload (its SaleCompleted goes
out through checkout's outbox, which the running checkout relays)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `offline` and its subcommands on the `storeplane` parser."""
    offline = sub.add_parser("offline", parents=list(parents), help="checkout's quarantine of offline sales")
    inner = offline.add_subparsers(dest="offline_command", required=True)
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        default="",
        help="the checkout database (default: DATABASE_URL_CHECKOUT, else POSTGRES_URL's storeplane_checkout, "
        "else DATA_DIR/checkout.db)",
    )
    listing = inner.add_parser("list", parents=[database], help="the sales waiting in quarantine, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", type=int, default=0, help="only quarantine ids above this (paging)")
    listing.add_argument("--json", action="store_true", help="each sale as sent, one JSON object per line")
    listing.set_defaults(func=cmd_list)
    again = inner.add_parser("resubmit", parents=[database], help="record a quarantined sale again")
    again.add_argument("quarantine_id", type=int)
    again.add_argument(
        "--sale-json", default="", help="a corrected OfflineSale as JSON (a file, or - for stdin); default: as kept"
    )
    again.set_defaults(func=cmd_resubmit)


def _database(args: argparse.Namespace) -> Any:
    from storeplane_cli.stack import database_url_for
    from storeplane_runtime.db import Database

    return Database(args.database_url or database_url_for("checkout", os.environ))


def cmd_list(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from checkout.offline import list_quarantined

    database = _database(args)
    try:
        waiting = list_quarantined(database, limit=args.limit, after_id=args.after)
    finally:
        database.dispose()
    for sale in waiting:
        if args.json:
            body = json_format.MessageToJson(sale.sale, indent=None)
            print(f'{{"quarantine_id": {sale.quarantine_id}, "reason": "{sale.reason}", "sale": {body}}}')
        else:
            received = sale.received_at.isoformat(timespec="seconds")
            print(f"{sale.quarantine_id:>8}  {received}  {sale.store_id:<24} {sale.client_sale_id}  {sale.reason}")
    if not args.json:
        print(f"{len(waiting)} waiting", file=sys.stderr)
    return 0


def cmd_resubmit(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from checkout.main import Settings, rules_of
    from checkout.offline import resubmit
    from pos.checkout.v1 import checkout_pb2
    from storeplane_runtime.clock import utcnow
    from storeplane_runtime.settings import load_settings

    sale = None
    if args.sale_json:
        text = sys.stdin.read() if args.sale_json == "-" else Path(args.sale_json).read_text()
        sale = json_format.Parse(text, checkout_pb2.OfflineSale())
    rules = rules_of(load_settings(Settings, "checkout"))
    database = _database(args)
    try:
        result = resubmit(database, rules, args.quarantine_id, utcnow(), sale=sale)
    except LookupError as exc:
        print(f"storeplane offline resubmit: {exc}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    outcome = checkout_pb2.OfflineSaleOutcome.Name(result.outcome).removeprefix("OFFLINE_SALE_OUTCOME_")
    print(f"{result.client_sale_id}: {outcome} {result.sale_id or result.reason}")
    return 0 if outcome in {"ACCEPTED", "DUPLICATE"} else 1
