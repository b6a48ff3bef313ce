"""Erasure helpers: a customer's sent events leave the outbox, unsent ones stay to go out; stored answers are
rewritten for the keys named and no others. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, literal, select, union_all

from storeplane_runtime.db import Database
from storeplane_runtime.erasure import forget_sent_events, forget_sent_events_of, rewrite_answers
from storeplane_runtime.tables import idempotency_table, messaging_metadata, outbox_table


def _database(url: str) -> Database:
    database = Database(url)
    with database.engine.begin() as conn:
        messaging_metadata.create_all(conn)
    return database


NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _event(n: int, subject: str, sent: bool) -> dict[str, object]:
    return {
        "event_id": f"00000000-0000-0000-0000-{n:012d}",
        "event_type": "pos.customer.v1.CustomerRegistered",
        "source": "/storeplane/customer",
        "subject": subject,
        "store_id": "",
        "payload": b"card 6000000000000001",
        "headers": {},
        "occurred_at": NOW,
        "sent_at": NOW if sent else None,
        "attempts": 0,
    }


def _key(caller: str, request_id: str) -> dict[str, object]:
    return {
        "caller": caller,
        "request_id": request_id,
        "method": "/pos.customer.v1.CustomerService/RegisterCustomer",
        "request_hash": "h",
        "response": b"profile with email",
        "created_at": NOW,
    }


def test_sent_events_of_the_subject_go_and_nothing_else(database_url: str) -> None:
    database = _database(database_url)
    with database.engine.begin() as conn:
        conn.execute(
            insert(outbox_table),
            [_event(1, "c-1", True), _event(2, "c-1", False), _event(3, "c-2", True), _event(4, "", True)],
        )
        assert forget_sent_events(conn, "c-1") == 1
        left = conn.execute(select(outbox_table.c.event_id).order_by(outbox_table.c.event_id)).scalars().all()
    assert [e[-1] for e in left] == ["2", "3", "4"]
    database.dispose()


def test_sent_events_of_erased_subjects_go_in_batches(database_url: str) -> None:
    database = _database(database_url)
    with database.engine.begin() as conn:
        events = [_event(n, "c-1", n != 3) for n in range(1, 6)] + [_event(9, "c-2", True), _event(10, "c-3", True)]
        conn.execute(insert(outbox_table), events)
        erased = union_all(select(literal("c-1")), select(literal("c-3")))
        assert forget_sent_events_of(conn, select(erased.subquery().c[0]), 3) == 3
        assert forget_sent_events_of(conn, select(erased.subquery().c[0]), 3) == 2
        assert forget_sent_events_of(conn, select(erased.subquery().c[0]), 3) == 0
        left = conn.execute(select(outbox_table.c.event_id).order_by(outbox_table.c.event_id)).scalars().all()
    assert [int(e[-2:]) for e in left] == [3, 9]  # c-1's unsent row and c-2's stay
    database.dispose()


def test_answers_are_rewritten_for_the_named_keys_only(database_url: str) -> None:
    database = _database(database_url)
    with database.engine.begin() as conn:
        conn.execute(insert(idempotency_table), [_key("till-1", "r1"), _key("till-1", "r2"), _key("till-2", "r1")])
        assert rewrite_answers(conn, [("till-1", "r1", b"tombstone"), ("till-9", "r1", b"tombstone")]) == 1
        t = idempotency_table
        rows = {f"{c}/{r}": body for c, r, body in conn.execute(select(t.c.caller, t.c.request_id, t.c.response))}
    assert rows == {"till-1/r1": b"tombstone", "till-1/r2": b"profile with email", "till-2/r1": b"profile with email"}
    database.dispose()


def test_database_errors_never_show_row_values_or_parameters_in_logs(postgres_url: str) -> None:
    """A unique violation's text names the value (PostgreSQL's DETAIL) and SQLAlchemy would add the parameters:
    neither reaches a log line."""
    import logging

    from sqlalchemy import exc, text

    from storeplane_runtime.driver import driver_execute
    from storeplane_runtime.logs import JsonFormatter

    database = Database(postgres_url)
    secret = "anna.secret@example.org"
    with database.engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (email text PRIMARY KEY)"))
        conn.execute(text("INSERT INTO people VALUES (:e)"), {"e": secret})
    for run in (
        lambda conn: conn.execute(text("INSERT INTO people VALUES (:e)"), {"e": secret}),
        lambda conn: driver_execute(conn, "INSERT INTO people VALUES (%(e)s)", {"e": secret}),
    ):
        with database.engine.connect() as conn, conn.begin():
            try:
                run(conn)
            except exc.IntegrityError:
                record = logging.LogRecord(
                    "t", logging.ERROR, __file__, 1, "rpc failed", (), __import__("sys").exc_info()
                )
                line = JsonFormatter().format(record)
        assert "IntegrityError" in line and secret not in line
    database.dispose()


def test_a_value_is_cleared_from_held_events_and_stored_answers_by_content(database_url: str) -> None:
    from pos.checkout.v1 import events_pb2
    from pos.loyalty.v1 import loyalty_pb2
    from storeplane_runtime.erasure import scrub_value
    from storeplane_runtime.tables import held_events_table

    card = "2990000000017"
    sale = events_pb2.SaleCompleted(sale_id="s-1", customer_id="c-1", loyalty_card_number=card, store_id="b")
    other = events_pb2.SaleCompleted(sale_id="s-2", customer_id="c-2", loyalty_card_number="2990000000025")
    answer = loyalty_pb2.GetAccountResponse(account=loyalty_pb2.Account(customer_id="c-1", loyalty_card_number=card))
    database = _database(database_url)
    with database.engine.begin() as conn:
        held = [
            {
                "consumer": "loyalty",
                "event_id": f"e-{i}",
                "event_type": "pos.checkout.v1.SaleCompleted",
                "source": "checkout",
                "subject": "",
                "store_id": "",
                "payload": event.SerializeToString(),
                "trace_headers": {},
                "occurred_at": NOW,
                "state": "parked",
                "attempt": 3,
                "due_at": None,
                "reason": "boom",
                "held_at": NOW,
            }
            for i, event in enumerate((sale, other))
        ]
        conn.execute(insert(held_events_table), held)
        conn.execute(insert(idempotency_table), [{**_key("till-1", "r1"), "response": answer.SerializeToString()}])
        decoders = {
            "pos.checkout.v1.SaleCompleted": events_pb2.SaleCompleted.FromString,
            "/pos.customer.v1.CustomerService/RegisterCustomer": loyalty_pb2.GetAccountResponse.FromString,
        }
        assert scrub_value(conn, card, decoders, answers=False) == 1
        assert scrub_value(conn, card, decoders) == 1  # now the stored answer
        payloads = dict(conn.execute(select(held_events_table.c.event_id, held_events_table.c.payload)).all())
        stored = conn.execute(select(idempotency_table.c.response)).scalar_one()
    kept = events_pb2.SaleCompleted.FromString(payloads["e-0"])
    assert kept.loyalty_card_number == "" and (kept.sale_id, kept.customer_id, kept.store_id) == ("s-1", "c-1", "b")
    assert events_pb2.SaleCompleted.FromString(payloads["e-1"]) == other
    assert loyalty_pb2.GetAccountResponse.FromString(stored).account.customer_id == "c-1"
    assert card.encode() not in stored
    database.dispose()
