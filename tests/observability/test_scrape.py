"""A real Prometheus (Debian's `prometheus`, on a free port) scrapes the five running processes (PostgreSQL,
RabbitMQ) with the committed rules loaded, during a short load through the gateway (seed, demo sales with a
customer and redeemed points, a return). Then every dashboard query, every recording rule's expression and every
alert's signal returns data, every alert expression evaluates without error, every recorded series exists and no
rule failed; and `storeplane top` shows every process up.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from storeplane_cli import demo, top
from storeplane_cli.seed import seed
from storeplane_runtime.testing import free_port_block, test_authority

from ..e2e.conftest import Stack, start_stack
from .test_rules import COMPONENT_RULES

STORE = "berlin-mitte"
WAIT = 90.0


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression; the body says why
        result = json.loads(exc.read())
    return result


def get(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


@pytest.fixture
def stack(make_postgres_url: Callable[[], str], make_amqp_url: Callable[[], str], tmp_path: Path) -> Iterator[Stack]:
    yield from start_stack(
        make_postgres_url,
        tmp_path,
        make_amqp_url(),
        metrics=True,
        OUTBOX_POLL_SECONDS="0.2",
        OPERATIONS_INTERVAL="1",
    )


@pytest.fixture
def prometheus(prometheus_bin: str, stack: Stack, tmp_path: Path) -> Iterator[str]:
    rules = yaml.safe_load(COMPONENT_RULES.read_text())["spec"]["groups"]
    for group in rules:
        group["interval"] = "1s"  # the same expressions, evaluated often enough for a short test
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "storeplane",
                # `process` as the PodMonitor's relabeling sets it in a cluster
                "static_configs": [
                    {"targets": [address], "labels": {"process": name}} for name, address in stack.metrics.items()
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port_block(1)  # outside the ephemeral range: nothing else takes it before Prometheus binds
    log = (tmp_path / "prometheus.log").open("wb")
    child = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = get(base, "/api/v1/targets")["data"]["activeTargets"]
                if len(targets) == len(stack.metrics) and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            assert child.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, f"targets not up: {targets}"
            time.sleep(0.5)
        yield base
    finally:
        child.terminate()
        child.wait(timeout=30)
        log.close()


def load(stack: Stack) -> None:
    """Seed, three demo sales with a customer and redeemed points, a partial return, a void: through the gateway."""
    token = test_authority().token()
    gateway = stack.addresses["gateway"]
    report = seed(gateway, token)
    assert report.ok, report.render()
    sale_ids = [demo.ring_up(gateway, token, STORE).sale_id for _ in range(3)]
    with stack.gateway(token) as channel:
        checkout = checkout_pb2_grpc.CheckoutServiceStub(channel)
        sale = checkout.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale_ids[0]), timeout=10).sale
        checkout.ReturnItems(
            checkout_pb2.ReturnItemsRequest(
                original_sale_id=sale.sale_id,
                store_id=STORE,
                terminal_id="till-1",
                cashier_id="c1",
                lines=[checkout_pb2.ReturnItemLine(line_id=sale.lines[0].line_id, quantity=1, restock=True)],
                reason=checkout_pb2.RETURN_REASON_CHANGED_MIND,
                request_id="scrape-return-1",
            ),
            timeout=10,
        )
        basket = checkout.OpenBasket(
            checkout_pb2.OpenBasketRequest(
                store_id=STORE, terminal_id="till-1", cashier_id="c1", request_id="scrape-o"
            ),
            timeout=10,
        ).basket
        checkout.VoidBasket(
            checkout_pb2.VoidBasketRequest(
                basket_id=basket.basket_id, reason=checkout_pb2.VOID_REASON_CUSTOMER_ABANDONED, request_id="scrape-v"
            ),
            timeout=10,
        )


def test_every_query_and_rule_returns_data_from_the_running_stack(
    monitoring: ModuleType, stack: Stack, prometheus: str
) -> None:
    load(stack)
    must_have_data = {
        **{f"dashboard: {q}": q for q in monitoring.dashboard_queries()},
        **{f"recorded {name}": expr for name, expr in monitoring.RECORDED.items()},
        **{f"series {name}": name for name in monitoring.RECORDED},
        **{f"alert {a.name} signal": a.signal for a in monitoring.ALERTS},
    }
    alert_exprs = [r["expr"] for g in monitoring.rule_groups() for r in g["rules"] if "alert" in r]
    for expr in alert_exprs:  # quiet on a healthy stack is fine; an error is not
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (expr, answer)

    missing: dict[str, str] = {}
    deadline = time.monotonic() + WAIT
    while True:
        missing = {}
        for what, expr in must_have_data.items():
            answer = query(prometheus, expr)
            assert answer["status"] == "success", (what, answer)
            if not answer["data"]["result"]:
                missing[what] = expr
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, (
        "no data for (DB pool, queues, parked and business series need OperationsWatch in ServiceApp.with_database "
        "and checkout's and loyalty's metrics.watch in create_app):\n" + "\n".join(missing)
    )

    groups = get(prometheus, "/api/v1/rules")["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    # a healthy stack under a little load fires nothing
    firing = [a for a in get(prometheus, "/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert not firing, firing

    # the sales were counted by store and currency, the points too
    sales = query(prometheus, f'sum(storeplane_checkout_sales_total{{store="{STORE}",currency="EUR"}})')
    assert float(sales["data"]["result"][0]["value"][1]) == 3
    earned = query(prometheus, f'sum(storeplane_loyalty_points_earned_total{{store="{STORE}"}})')
    assert float(earned["data"]["result"][0]["value"][1]) > 0

    out = io.StringIO()
    assert top.run(stack.metrics, 1.0, once=True, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + len(stack.metrics) and "down" not in out.getvalue(), out.getvalue()
