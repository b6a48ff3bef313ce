"""Load the demo data through the gateway with a bearer token: the catalogue and stock (stock service), the customers
(customer service). Deterministic request ids make a second run a no-op. A service whose API is not
built yet is reported, not treated as a failure of the others."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_cli import demo_data
from storeplane_runtime.auth.client import with_bearer

SEED_VERSION = "v1"
MARKER = ".seeded"


@dataclass
class SeedReport:
    lines: list[str] = field(default_factory=list)
    failed: bool = False
    pending: bool = False  # some service answered UNIMPLEMENTED: try again once it is built

    @property
    def ok(self) -> bool:
        return not self.failed

    def render(self) -> str:
        return "\n".join(self.lines)


def _items() -> Iterator[stock_pb2.ImportItemsRequest]:
    for item in demo_data.catalogue():
        yield stock_pb2.ImportItemsRequest(
            request_id=f"seed-items-{SEED_VERSION}",
            item=stock_pb2.Item(
                sku=item.sku,
                barcodes=[item.barcode],
                name=item.name,
                tax_class=item.tax_class,
                prices=[common_pb2.Money(amount_minor=v, currency_code=c) for c, v in item.prices_minor.items()],
                reorder_point=item.reorder_point,
            ),
        )


def _levels() -> Iterator[stock_pb2.ImportStockLevelsRequest]:
    for store_id, sku, on_hand in demo_data.stock_levels():
        yield stock_pb2.ImportStockLevelsRequest(
            request_id=f"seed-levels-{SEED_VERSION}",
            row=stock_pb2.StockLevelRow(store_id=store_id, sku=sku, on_hand=on_hand),
        )


def _step(report: SeedReport, what: str, action: Callable[[], str]) -> None:
    try:
        report.lines.append(f"{what}: {action()}")
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            report.pending = True
            report.lines.append(f"{what}: skipped, the service does not implement it yet")
        else:
            report.failed = True
            report.lines.append(f"{what}: FAILED {code.name}: {exc.details()}")


def seed(gateway: str, token: str, timeout: float = 60.0) -> SeedReport:
    """Every part of the demo data, each call carrying `token` (it needs the import and registration scopes)."""
    report = SeedReport()
    with with_bearer(grpc.insecure_channel(gateway), token) as channel:
        stock = stock_pb2_grpc.StockServiceStub(channel)
        customers = customer_pb2_grpc.CustomerServiceStub(channel)

        def summary(s: stock_pb2.ImportSummary) -> str:
            return f"{s.created} created, {s.updated} updated, {s.unchanged} unchanged, {s.rejected} rejected"

        _step(report, "items", lambda: summary(stock.ImportItems(_items(), timeout=timeout).summary))
        _step(report, "stock levels", lambda: summary(stock.ImportStockLevels(_levels(), timeout=timeout).summary))

        def register() -> str:
            count = 0
            for person in demo_data.customers():
                customers.RegisterCustomer(
                    customer_pb2.RegisterCustomerRequest(
                        request_id=f"seed-customer-{SEED_VERSION}-{person.loyalty_card_number}",
                        customer=customer_pb2.Customer(
                            given_name=person.given_name,
                            family_name=person.family_name,
                            email=person.email,
                            phone=person.phone,
                            loyalty_card_number=person.loyalty_card_number,
                            home_store_id=person.home_store_id,
                        ),
                    ),
                    timeout=timeout,
                )
                count += 1
            return f"{count} registered"

        _step(report, "customers", register)
    return report


def seed_once(gateway: str, data_dir: Path, token: str, out: TextIO | None = None) -> SeedReport | None:
    """Seed on the first start of a data directory (the marker is written only when all parts landed)."""
    marker = data_dir / MARKER
    if marker.exists():
        return None
    report = seed(gateway, token)
    stream = out or io.StringIO()
    print("demo data:\n  " + report.render().replace("\n", "\n  "), file=stream, flush=True)
    if report.ok and not report.pending:
        marker.write_text(SEED_VERSION + "\n")
    return report
