"""`storeplane top`: a live table per process from the processes' own Prometheus metrics — call rate, server-error
ratio, p99 latency, outbox oldest age, parked events, database connections in use — refreshed in the terminal.

Each frame scrapes every process's /metrics twice, `--interval` seconds apart, and shows what happened in between
(rates, ratio, p99 from the histogram buckets' increase); the gauges are the second scrape's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from storeplane_runtime.settings import DEFAULT_METRICS_PORTS

__all__ = ["Row", "Scrape", "add_parser", "frame", "render", "run", "scrape", "targets"]

# gRPC codes that are the service's fault (the same set as the alert rules' error ratio)
SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"})
CLEAR = "\x1b[H\x1b[2J"

# (metric sample name, labels as a sorted tuple) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class Scrape:
    """One process's samples at one moment (None: it did not answer)."""

    at: float
    samples: Samples | None


@dataclass(frozen=True)
class Row:
    process: str
    up: bool
    rate: float = 0.0  # calls per second
    error_ratio: float | None = None  # None: no calls
    p99: float | None = None  # seconds
    outbox_age: float | None = None  # seconds; None: no outbox (the gateway)
    parked: float | None = None
    pool_in_use: float | None = None


def targets(host: str, metrics_base_port: int | None, overrides: Sequence[str]) -> dict[str, str]:
    """process -> host:port of its metrics: the conventional ports (or from `metrics_base_port` on), then the
    `name=host:port` overrides (a name not among the five adds a row)."""
    found = {}
    for i, (name, port) in enumerate(DEFAULT_METRICS_PORTS.items()):
        found[name] = f"{host}:{metrics_base_port + i if metrics_base_port else port}"
    for override in overrides:
        name, sep, address = override.partition("=")
        if not sep or not name or ":" not in address:
            raise ValueError(f"--target wants name=host:port, not {override!r}")
        found[name] = address
    return found


def scrape(address: str, timeout: float = 2.0) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as answer:
            text = answer.read().decode("utf-8")
    except (OSError, urllib.error.URLError):
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def _select(samples: Samples, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            yield dict(labels), value


def _total(samples: Samples, name: str, keep: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    return sum(v for labels, v in _select(samples, name) if keep(labels))


def _increase(before: Samples, after: Samples, name: str, keep: Callable[[dict[str, str]], bool]) -> float:
    # a counter that went down was reset (the process restarted): count what it has since
    total = 0.0
    for labels, value in _select(after, name):
        if keep(labels):
            previous = before.get((name, tuple(sorted(labels.items()))), 0.0)
            total += value - previous if value >= previous else value
    return total


def _bucket_increase(before: Samples, after: Samples, bound: float) -> float:
    """The increase of every method's bucket `le=bound` together (the process's latency over all its calls)."""

    def at_bound(labels: dict[str, str]) -> bool:
        return float(labels["le"]) == bound

    return _increase(before, after, "storeplane_rpc_duration_seconds_bucket", at_bound)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts {upper bound: count}: linear within a bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open-ended bucket: the highest finite bound is all one can say
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def row(process: str, before: Scrape, after: Scrape) -> Row:
    if before.samples is None or after.samples is None:
        return Row(process, up=False)
    elapsed = max(after.at - before.at, 1e-9)
    calls = _increase(before.samples, after.samples, "storeplane_rpc_handled_total", lambda _: True)
    errors = _increase(
        before.samples,
        after.samples,
        "storeplane_rpc_handled_total",
        lambda labels: labels.get("grpc_code") in SERVER_ERRORS,
    )
    bounds = {float(labels["le"]) for labels, _ in _select(after.samples, "storeplane_rpc_duration_seconds_bucket")}
    buckets = {bound: _bucket_increase(before.samples, after.samples, bound) for bound in bounds}
    has = {name for name, _ in after.samples}
    ages = [v for _, v in _select(after.samples, "storeplane_outbox_oldest_age_seconds")]
    return Row(
        process,
        up=True,
        rate=calls / elapsed,
        error_ratio=errors / calls if calls else None,
        p99=quantile(0.99, buckets),
        outbox_age=max(ages) if ages else None,
        parked=_total(after.samples, "storeplane_events_parked_current")
        if "storeplane_events_parked_current" in has
        else None,
        pool_in_use=_total(after.samples, "storeplane_db_pool_in_use") if "storeplane_db_pool_in_use" in has else None,
    )


def frame(
    where: Mapping[str, str],
    interval: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Row]:
    """Scrape every process, wait `interval`, scrape again: one row per process."""
    first = {name: Scrape(clock(), scrape(address)) for name, address in where.items()}
    sleep(interval)
    second = {name: Scrape(clock(), scrape(address)) for name, address in where.items()}
    return [row(name, first[name], second[name]) for name in where]


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ratio":
        return f"{value * 100:.1f}%"
    if kind == "ms":
        return f"{value * 1000:.1f}ms"
    if kind == "s":
        return f"{value:.1f}s"
    if kind == "rate":
        return f"{value:.1f}/s"
    return f"{value:g}"


COLUMNS = ("process", "rate", "errors", "p99", "outbox age", "parked", "db in use")


def render(rows: Sequence[Row], where: Mapping[str, str]) -> str:
    table = [list(COLUMNS)]
    for r in rows:
        if not r.up:
            table.append([r.process, f"down ({where.get(r.process, '?')})", "", "", "", "", ""])
            continue
        table.append(
            [
                r.process,
                _fmt(r.rate, "rate"),
                _fmt(r.error_ratio, "ratio"),
                _fmt(r.p99, "ms"),
                _fmt(r.outbox_age, "s"),
                _fmt(r.parked, "count"),
                _fmt(r.pool_in_use, "count"),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run(
    where: Mapping[str, str], interval: float, *, once: bool, out: TextIO = sys.stdout, frames: int | None = None
) -> int:
    """Print frames until interrupted (`once`: one frame, no screen clearing). 1 when every process is down."""
    shown = 0
    try:
        while True:
            rows = frame(where, interval)
            text = render(rows, where)
            if once:
                out.write(text)
                return 0 if any(r.up for r in rows) else 1
            out.write(CLEAR + time.strftime("storeplane top  %H:%M:%S  (Ctrl-C to quit)\n\n") + text)
            out.flush()
            shown += 1
            if frames is not None and shown >= frames:
                return 0
    except KeyboardInterrupt:
        return 0


def cmd_top(args: argparse.Namespace) -> int:
    try:
        where = targets(args.host, args.metrics_base_port, args.target)
    except ValueError as exc:
        print(f"storeplane top: {exc}", file=sys.stderr)
        return 2
    if args.only:
        where = {name: address for name, address in where.items() if name in set(args.only)}
    return run(where, args.interval, once=args.once)


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    top = sub.add_parser(
        "top", parents=list(parents), help="live table per process: rate, error ratio, p99, outbox age, parked"
    )
    top.add_argument(
        "--metrics-base-port",
        type=int,
        default=None,
        help="the gateway's metrics port, the services' the next four (default: the conventional 9450-9454)",
    )
    top.add_argument("--target", action="append", default=[], help="name=host:port of a process's metrics (repeatable)")
    top.add_argument("--only", nargs="*", default=[], help="only these processes")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between the two scrapes of a frame")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(func=cmd_top)
