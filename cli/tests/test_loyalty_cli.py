"""`storeplane loyalty verify` checks a loyalty database's ledger at any time: sound after real work, and every
problem named when a balance no longer follows from its entries."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from loyalty.main import create_app
from loyalty.settings import LoyaltySettings
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from pos.customer.v1 import events_pb2 as customer_events
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_cli.main import main
from storeplane_runtime.testing import deliver, service_settings, start_service


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def _some_ledger(url: str) -> None:
    running = start_service(create_app, service_settings(LoyaltySettings, "loyalty", url))
    try:
        deliver(running.app, customer_events.CustomerRegistered(customer_id="c1", loyalty_card_number="card-1"))
        paid = common_pb2.Money(amount_minor=12_345, currency_code="EUR")
        sale = checkout_events.SaleCompleted(
            sale_id="s1",
            store_id="berlin-mitte",
            customer_id="c1",
            currency_code="EUR",
            amount_paid=paid,
            lines=[checkout_events.SaleCompleted.Line(line_id="l1", quantity=1, total_amount=paid)],
        )
        deliver(running.app, sale)
        loyalty_pb2_grpc.LoyaltyServiceStub(running.channel).AdjustPoints(
            loyalty_pb2.AdjustPointsRequest(
                customer_id="c1",
                points=-23,
                reason=loyalty_pb2.ADJUSTMENT_REASON_CORRECTION,
                request_id=str(uuid.uuid4()),
            ),
            timeout=10,
        )
    finally:
        running.stop()


def test_verify_finds_a_sound_ledger_sound_and_names_a_broken_balance(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _some_ledger(database_url)
    code, out, _ = _run(capsys, "loyalty", "verify", "--database-url", database_url)
    assert code == 0, out
    assert "1 accounts, 2 entries" in out and "sound" in out

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET balance = balance + 1"))
    engine.dispose()
    code, _, err = _run(capsys, "loyalty", "verify", "--database-url", database_url)
    assert code == 1
    assert "balance 101 but its entries sum to 100" in err and "NOT sound" in err
