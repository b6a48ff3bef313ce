"""`storeplane`: run the embedded stack, start the services as processes, seed demo data, check health, mint
development tokens."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from storeplane_cli import tokens

if TYPE_CHECKING:
    from storeplane_cli.stack import Layout

# The stack, the services and the event tools load in a second or two: they are imported by the commands that use
# them, so that `$(storeplane token)` in a script is quick.


def _layout(args: argparse.Namespace) -> Layout:
    from storeplane_cli.stack import Layout

    return Layout(host=args.host, base_port=args.base_port)


def cmd_run(args: argparse.Namespace) -> int:
    from storeplane_cli.stack import EmbeddedStack
    from storeplane_runtime.logs import configure_logging
    from storeplane_runtime.server import run_until_signal, stop_on_signal

    configure_logging(args.log_level)
    layout = _layout(args)
    data_dir = Path(args.data_dir)
    stop = stop_on_signal()  # a signal while starting or loading the demo data stops the stack gracefully too
    started = time.perf_counter()
    stack = EmbeddedStack(layout, data_dir, metrics_port=args.metrics_port)
    stack.start()
    elapsed = time.perf_counter() - started
    gateway = layout.address("gateway")
    print(f"storeplane is up in {elapsed:.2f}s — gateway at {gateway} (data in {args.data_dir})", flush=True)
    print(banner(gateway, data_dir, layout.base_port), flush=True)
    if not args.no_seed:
        from storeplane_cli.seed import seed_once

        # Beside the serving, not before it: a SIGTERM or Ctrl-C while the demo data loads stops the stack as
        # gracefully as later (the data is loaded again on the next start: the marker is written only when all
        # of it landed).
        threading.Thread(
            target=seed_once,
            args=(gateway, data_dir, seed_token(data_dir)),
            kwargs={"out": sys.stdout},
            name="seed",
            daemon=True,
        ).start()
    run_until_signal([app.host for app in stack.apps], drain_seconds=0, stop=stop)
    stack.stop(0)
    return 0


def banner(gateway: str, data_dir: Path, base_port: int) -> str:
    """How to call the stack: every call but health and reflection needs a token of its issuer."""
    token = tokens.token_hint(data_dir)
    return "\n".join(
        [
            f"  token:  {token}    (every scope, all stores, 12 h; --scopes, --stores, --ttl: see --help)",
            f"  try:    grpcurl -plaintext {gateway} list",
            f'          grpcurl -plaintext -H "authorization: Bearer $({token})" \\',
            """              -d '{"store_id":"berlin-mitte","sku":"SHO-RUN-01-BLA-40"}' \\""",
            f"              {gateway} pos.stock.v1.StockService/GetItem",
            f"  health: {tokens.cli_name()} health --base-port {base_port}",
        ]
    )


def seed_token(data_dir: Path) -> str:
    """What the demo data is loaded with: every scope, every store, for as long as a seed may take."""
    return tokens.dev_issuer(data_dir).mint(subject="storeplane-seed", ttl_seconds=3600)


def cmd_up(args: argparse.Namespace) -> int:
    from storeplane_cli.stack import ProcessStack
    from storeplane_runtime.logs import configure_logging

    configure_logging(args.log_level)
    if not os.environ.get("AMQP_URL"):
        print(
            "storeplane up: AMQP_URL is not set — separate processes exchange events through RabbitMQ "
            "(e.g. AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F); `storeplane run` needs no broker",
            file=sys.stderr,
        )
        return 2
    layout = _layout(args)
    stack = ProcessStack(layout, os.environ)
    stack.start()
    gateway = layout.address("gateway")
    print(f"storeplane processes started; gateway at {gateway}", flush=True)
    print(banner(gateway, tokens.default_data_dir(), layout.base_port), flush=True)
    return stack.wait()


def cmd_health(args: argparse.Namespace) -> int:
    from storeplane_cli import health
    from storeplane_cli.stack import PROCESSES

    layout = _layout(args)
    rows = health.check_all({name: layout.address(name) for name in PROCESSES}, timeout=args.timeout)
    print(health.render(rows))
    return 0 if all(r.status == "SERVING" for r in rows) else 1


def cmd_seed(args: argparse.Namespace) -> int:
    from storeplane_cli.seed import seed

    data_dir = Path(args.data_dir)
    if not args.token and not tokens.has_dev_issuer(data_dir):
        # New keys made here would sign tokens no running stack trusts.
        print(
            f"storeplane seed: no development keys under {tokens.auth_dir(data_dir)} (a stack makes them on its first "
            "start: give its --data-dir), or pass --token",
            file=sys.stderr,
        )
        return 2
    token = args.token or seed_token(data_dir)
    report = seed(args.gateway or _layout(args).address("gateway"), token)
    print(report.render())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from storeplane_cli import demo

    data_dir = Path(args.data_dir)
    if not args.token and not tokens.has_dev_issuer(data_dir):
        print(
            f"storeplane demo: no development keys under {tokens.auth_dir(data_dir)} (give the stack's --data-dir, "
            "or pass --token)",
            file=sys.stderr,
        )
        return 2
    token = args.token or tokens.dev_issuer(data_dir).mint(subject="storeplane-demo", ttl_seconds=600)
    return demo.run(args.gateway or _layout(args).address("gateway"), token, args.store, sys.stdout)


def parser() -> argparse.ArgumentParser:
    from storeplane_cli import events, loyalty, offline, top

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "WARNING"))
    common.add_argument("--host", default="127.0.0.1", help="address the processes listen on / are reached at")
    common.add_argument("--base-port", type=int, default=50050, help="gateway port; services use the next four")
    p = argparse.ArgumentParser(prog="storeplane", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", parents=[common], help="the embedded stack: all five processes in this one, SQLite, in-process bus"
    )
    run.add_argument("--data-dir", default=str(tokens.default_data_dir()), help="databases and development keys")
    run.add_argument("--metrics-port", type=int, default=9450)
    run.add_argument("--no-seed", action="store_true", help="do not load demo data on first start")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser(
        "up", parents=[common], help="each process its own; DATABASE_URL_<SVC> or POSTGRES_URL, AMQP_URL from env"
    )
    up.set_defaults(func=cmd_up)

    hc = sub.add_parser("health", parents=[common], help="ask every process for its health")
    hc.add_argument("--timeout", type=float, default=2.0)
    hc.set_defaults(func=cmd_health)

    seed = sub.add_parser("seed", parents=[common], help="load the deterministic demo data through the gateway")
    seed.add_argument("--gateway", default="", help="host:port of the gateway (default: from --host/--base-port)")
    seed.add_argument(
        "--data-dir", default=str(tokens.default_data_dir()), help="whose development keys sign the seed's token"
    )
    seed.add_argument("--token", default="", help="a bearer token to seed with instead")
    seed.set_defaults(func=cmd_seed)

    demo = sub.add_parser("demo", parents=[common], help="ring up a sale through the gateway and print its receipt")
    demo.add_argument("--gateway", default="", help="host:port of the gateway (default: from --host/--base-port)")
    demo.add_argument("--data-dir", default=str(tokens.default_data_dir()), help="whose development keys sign")
    demo.add_argument("--token", default="", help="a bearer token to ring up with instead")
    demo.add_argument("--store", default="berlin-mitte", help="the store (a configured one with demo customers)")
    demo.set_defaults(func=cmd_demo)

    tokens.add_parsers(sub)
    events.add_parser(sub, parents=[common])
    loyalty.add_parser(sub, parents=[common])
    offline.add_parser(sub, parents=[common])
    top.add_parser(sub, parents=[common])
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in tokens.COMMANDS:
        raise SystemExit(tokens.main(argv[0], argv[1:]))
    from storeplane_runtime.migrations import SchemaError
    from storeplane_runtime.settings import SettingsError

    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except (SettingsError, SchemaError) as exc:
        print(str(exc.code), file=sys.stderr)
        code = 2
    except OSError as exc:
        print(f"storeplane: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
