"""`storeplane`: run the embedded stack, start the services as processes, seed demo data, check health."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from storeplane_cli import events, health
from storeplane_cli.stack import PROCESSES, EmbeddedStack, Layout, ProcessStack, default_data_dir
from storeplane_runtime.logs import configure_logging
from storeplane_runtime.migrations import SchemaError
from storeplane_runtime.server import run_until_signal
from storeplane_runtime.settings import SettingsError

log = logging.getLogger("storeplane")


def _layout(args: argparse.Namespace) -> Layout:
    return Layout(host=args.host, base_port=args.base_port)


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    layout = _layout(args)
    started = time.perf_counter()
    stack = EmbeddedStack(layout, Path(args.data_dir), metrics_port=args.metrics_port)
    stack.start()
    elapsed = time.perf_counter() - started
    gateway = layout.address("gateway")
    print(f"storeplane is up in {elapsed:.2f}s — gateway at {gateway} (data in {args.data_dir})", flush=True)
    print(f"  try:    grpcurl -plaintext {gateway} list", flush=True)
    print(f"  health: storeplane health --base-port {layout.base_port}", flush=True)
    if not args.no_seed:
        from storeplane_cli.seed import seed_once

        seed_once(gateway, Path(args.data_dir), out=sys.stdout)
    run_until_signal([app.host for app in stack.apps], drain_seconds=0)
    stack.stop(0)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    if not os.environ.get("AMQP_URL"):
        print(
            "storeplane up: AMQP_URL is not set — separate processes exchange events through RabbitMQ "
            "(e.g. AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F); `storeplane run` needs no broker",
            file=sys.stderr,
        )
        return 2
    stack = ProcessStack(_layout(args), os.environ)
    stack.start()
    print(f"storeplane processes started; gateway at {_layout(args).address('gateway')}", flush=True)
    return stack.wait()


def cmd_health(args: argparse.Namespace) -> int:
    layout = _layout(args)
    rows = health.check_all({name: layout.address(name) for name in PROCESSES}, timeout=args.timeout)
    print(health.render(rows))
    return 0 if all(r.status == "SERVING" for r in rows) else 1


def cmd_seed(args: argparse.Namespace) -> int:
    from storeplane_cli.seed import seed

    report = seed(args.gateway or _layout(args).address("gateway"))
    print(report.render())
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "WARNING"))
    common.add_argument("--host", default="127.0.0.1", help="address the processes listen on / are reached at")
    common.add_argument("--base-port", type=int, default=50050, help="gateway port; services use the next four")
    p = argparse.ArgumentParser(prog="storeplane", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", parents=[common], help="the embedded stack: all five processes in this one, SQLite, in-process bus"
    )
    run.add_argument("--data-dir", default=str(default_data_dir()))
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
    seed.set_defaults(func=cmd_seed)

    events.add_parser(sub, parents=[common])
    return p


def main(argv: Sequence[str] | None = None) -> None:
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
