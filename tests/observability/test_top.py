"""`storeplane top` against real metrics endpoints (prometheus_client's HTTP server on free ports): rates, error
ratio and p99 from two scrapes, the gauges, a process that is down, and the command line's one frame."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from storeplane_cli import top
from storeplane_runtime.settings import DEFAULT_METRICS_PORTS
from storeplane_runtime.testing import free_port, free_port_block


class FakeProcess:
    """The metrics a storeplane process exposes, on a registry of its own served on a free port."""

    def __init__(self, outbox: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.handled = Counter(
            "storeplane_rpc_handled_total", "", ["grpc_service", "grpc_method", "grpc_code"], registry=self.registry
        )
        self.latency = Histogram(
            "storeplane_rpc_duration_seconds",
            "",
            ["grpc_service", "grpc_method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        if outbox:
            Gauge("storeplane_outbox_oldest_age_seconds", "", ["service"], registry=self.registry).labels("x").set(3.5)
            parked = Gauge("storeplane_events_parked_current", "", ["consumer", "place"], registry=self.registry)
            parked.labels("x", "broker").set(2)
            parked.labels("x", "database").set(1)
            Gauge("storeplane_db_pool_in_use", "", ["service"], registry=self.registry).labels("x").set(4)
        self.port = free_port_block(1)
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self, ok: int, internal: int = 0, refused: int = 0, seconds: float = 0.003) -> None:
        for code, count in (("OK", ok), ("INTERNAL", internal), ("NOT_FOUND", refused)):
            if count:
                self.handled.labels("pos.x.v1.X", "Do", code).inc(count)
        for _ in range(ok + internal + refused):
            self.latency.labels("pos.x.v1.X", "Do").observe(seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def processes() -> Iterator[dict[str, FakeProcess]]:
    made = {"checkout": FakeProcess(), "gateway": FakeProcess(outbox=False)}
    yield made
    for p in made.values():
        p.close()


def test_a_frame_shows_what_happened_between_two_scrapes(processes: dict[str, FakeProcess]) -> None:
    checkout, gateway = processes["checkout"], processes["gateway"]
    checkout.calls(ok=1000, internal=50)  # before the first scrape: not in the frame
    where = {"checkout": checkout.address, "gateway": gateway.address, "stock": f"127.0.0.1:{free_port()}"}
    now = [100.0]

    def meanwhile(_: float) -> None:
        checkout.calls(ok=90, internal=5, refused=5, seconds=0.003)
        checkout.calls(ok=0, internal=0, refused=0)
        checkout.latency.labels("pos.x.v1.X", "Do").observe(0.4)  # the one slow call of 101: above p99's rank
        gateway.calls(ok=20)
        now[0] += 10.0

    rows = {r.process: r for r in top.frame(where, 10.0, sleep=meanwhile, clock=lambda: now[0])}
    c = rows["checkout"]
    assert c.up and c.rate == pytest.approx(10.0)
    assert c.error_ratio == pytest.approx(0.05)  # NOT_FOUND is the caller's, not an error
    assert c.p99 is not None and 0.0025 < c.p99 <= 0.005  # 100 of 101 observations at 3 ms
    assert (c.outbox_age, c.parked, c.pool_in_use) == (3.5, 3, 4)
    g = rows["gateway"]
    assert g.up and g.rate == pytest.approx(2.0) and g.error_ratio == 0 and g.outbox_age is None and g.parked is None
    assert not rows["stock"].up
    text = top.render(list(rows.values()), where)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["process", "rate", "errors"]
    assert "10.0/s" in text and "5.0%" in text and "3.5s" in text
    assert any(line.startswith("stock") and "down" in line for line in lines)


def test_a_restarted_process_counts_from_zero(processes: dict[str, FakeProcess]) -> None:
    before = top.Scrape(0.0, {("storeplane_rpc_handled_total", (("grpc_code", "OK"),)): 500.0})
    after = top.Scrape(10.0, {("storeplane_rpc_handled_total", (("grpc_code", "OK"),)): 30.0})
    assert top.row("x", before, after).rate == pytest.approx(3.0)


def test_quantile_is_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, float("inf"): 100.0}
    assert top.quantile(0.5, buckets) == pytest.approx(0.1)
    assert top.quantile(0.7, buckets) == pytest.approx(0.175)
    assert top.quantile(0.99, buckets) == pytest.approx(0.475)
    assert top.quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None


def test_targets_are_the_conventional_ports_unless_told() -> None:
    assert top.targets("10.0.0.1", None, []) == {n: f"10.0.0.1:{p}" for n, p in DEFAULT_METRICS_PORTS.items()}
    moved = top.targets("h", 19450, ["loyalty=other:1234"])
    assert moved["gateway"] == "h:19450" and moved["stock"] == "h:19452" and moved["loyalty"] == "other:1234"
    with pytest.raises(ValueError):
        top.targets("h", None, ["nonsense"])


def test_the_command_prints_one_frame(processes: dict[str, FakeProcess]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    sub = parser.add_subparsers(dest="command")
    top.add_parser(sub)
    checkout = processes["checkout"]
    args = parser.parse_args(
        ["top", "--once", "--interval", "0.2", "--target", f"checkout={checkout.address}", "--only", "checkout"]
    )
    out = io.StringIO()
    where = top.targets(args.host, args.metrics_base_port, args.target)
    assert top.run({"checkout": where["checkout"]}, args.interval, once=True, out=out) == 0
    assert out.getvalue().splitlines()[1].startswith("checkout")
    assert args.func is top.cmd_top
    assert top.run({"stock": f"127.0.0.1:{free_port()}"}, 0.01, once=True, out=io.StringIO()) == 1


def test_live_frames_clear_the_screen(processes: dict[str, FakeProcess]) -> None:
    out = io.StringIO()
    assert top.run({"checkout": processes["checkout"].address}, 0.05, once=False, out=out, frames=2) == 0
    assert out.getvalue().count(top.CLEAR) == 2
