"""`storeplane demo` rings up a sale through the gateway of a running stack and prints its receipt; `storeplane
offline list|resubmit` shows the offline sales checkout quarantined and records one again once corrected."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_cli import demo_data
from storeplane_cli.main import main
from storeplane_cli.seed import seed
from storeplane_cli.stack import EmbeddedStack, Layout
from storeplane_cli.tokens import dev_issuer
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.testing import free_port_block, wait_until


@pytest.fixture
def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    layout = Layout(base_port=free_port_block(5))
    running = EmbeddedStack(layout, tmp_path)
    running.start()
    try:
        gateway = layout.address("gateway")
        report = seed(gateway, dev_issuer(tmp_path).mint(subject="seed"))
        assert report.ok and not report.pending, report.render()
        yield layout
    finally:
        running.stop(0)


def _enrolled(gateway: str, token: str, card: str) -> bool:
    with with_bearer(grpc.insecure_channel(gateway), token) as channel:
        try:
            loyalty_pb2_grpc.LoyaltyServiceStub(channel).GetAccount(
                loyalty_pb2.GetAccountRequest(loyalty_card_number=card), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
    return True


def test_demo_rings_up_a_sale_and_prints_the_receipt(
    stack: Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    person = next(p for p in demo_data.customers() if p.home_store_id == "berlin-mitte")
    token = dev_issuer(tmp_path).mint(subject="test")
    wait_until(lambda: _enrolled(stack.address("gateway"), token, person.loyalty_card_number), 30, "enrolment")
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["demo", "--data-dir", str(tmp_path), "--base-port", str(stack.base_port)])
    out = capsys.readouterr().out
    assert ended.value.code == 0, out
    assert "redeemed 300 points" in out and "paid by card" in out
    receipt = out.split("\n\n", 1)[1].strip().splitlines()
    assert receipt and all(len(line) <= 42 for line in receipt)
    assert any("berlin-mitte-demo-till-" in line for line in receipt) or "receipt berlin-mitte-demo-till-" in out


def test_a_quarantined_offline_sale_is_listed_and_recorded_once_corrected(
    stack: Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = next(i for i in demo_data.catalogue() if "EUR" in i.prices_minor)
    price = item.prices_minor["EUR"]
    sale = checkout_pb2.OfflineSale(
        client_sale_id=str(uuid.uuid4()),
        store_id="berlin-mitte",
        terminal_id="till-7",
        cashier_id="c-7",
        currency_code="EUR",
        lines=[
            checkout_pb2.OfflineSaleLine(
                sku=item.sku, quantity=1, unit_price=common_pb2.Money(amount_minor=price, currency_code="EUR")
            )
        ],
        tenders=[  # one cent short: the store's till got it wrong
            checkout_pb2.Tender(
                type=checkout_pb2.TENDER_TYPE_CARD,
                amount=common_pb2.Money(amount_minor=price - 1, currency_code="EUR"),
            )
        ],
    )
    sale.sold_at.FromDatetime(datetime.now(UTC))
    token = dev_issuer(tmp_path).mint(subject="test")
    with with_bearer(grpc.insecure_channel(stack.address("gateway")), token) as channel:
        upload = checkout_pb2_grpc.CheckoutServiceStub(channel).UploadOfflineSales(
            iter([checkout_pb2.UploadOfflineSalesRequest(request_id=str(uuid.uuid4()), sale=sale)]), timeout=30
        )
    assert upload.rejected == 1
    database = ["--database-url", f"sqlite:///{tmp_path / 'checkout.db'}"]

    def storeplane(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:
            main(["offline", *argv, *database])
        return int(ended.value.code or 0), capsys.readouterr().out

    code, out = storeplane("list", "--json")
    (line,) = out.strip().splitlines()
    waiting = json.loads(line)
    assert code == 0 and waiting["sale"]["clientSaleId"] == sale.client_sale_id
    assert waiting["reason"]
    corrected = tmp_path / "corrected.json"
    waiting["sale"]["tenders"][0]["amount"]["amountMinor"] = str(price)
    corrected.write_text(json.dumps(waiting["sale"]))
    code, out = storeplane("resubmit", str(waiting["quarantine_id"]), "--sale-json", str(corrected))
    assert code == 0 and f"{sale.client_sale_id}: ACCEPTED" in out
    code, out = storeplane("list")
    assert out.strip() == ""
    code, _ = storeplane("resubmit", str(waiting["quarantine_id"]))
    assert code == 2  # resolved: nothing waits under that id any more
