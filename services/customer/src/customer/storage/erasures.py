"""What erasure needs besides the customer row: which stored answers showed the customer (to rewrite them), and which
erased customers may still have events in the outbox (to delete them once sent). The kit's `erasure` module does
the rewriting and deleting in its own tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, exists, select

from customer.storage.tables import customer_requests, pending_erasures
from storeplane_runtime.erasure import forget_sent_events_of
from storeplane_runtime.sql import Db, insert_for
from storeplane_runtime.tables import outbox_table

_r = customer_requests.c
_p = pending_erasures.c


def record_request(conn: Connection, caller: str, request_id: str, customer_id: str, now: datetime) -> None:
    """Remember that the answer stored under (caller, request_id) shows `customer_id`."""
    statement = insert_for(conn, customer_requests).values(
        caller=caller, request_id=request_id, customer_id=customer_id, created_at=now
    )
    conn.execute(statement.on_conflict_do_nothing())


def requests_of(conn: Db, customer_id: str) -> list[tuple[str, str]]:
    """The (caller, request_id) of every kept answer that shows the customer."""
    query = select(_r.caller, _r.request_id).where(_r.customer_id == customer_id)
    return [(row.caller, row.request_id) for row in conn.execute(query)]


def drop_requests(conn: Connection, customer_id: str) -> None:
    conn.execute(delete(customer_requests).where(_r.customer_id == customer_id))


def prune_requests(conn: Connection, before: datetime, limit: int) -> int:
    """Forget up to `limit` records older than the answers they point to can be (those keys are pruned)."""
    ids = select(_r.caller, _r.request_id).where(_r.created_at < before).limit(limit)
    due = [(row.caller, row.request_id) for row in conn.execute(ids)]
    for caller, request_id in due:
        conn.execute(delete(customer_requests).where(_r.caller == caller, _r.request_id == request_id))
    return len(due)


def mark_erasure_pending(conn: Connection, customer_id: str, now: datetime) -> None:
    conn.execute(
        insert_for(conn, pending_erasures).values(customer_id=customer_id, erased_at=now).on_conflict_do_nothing()
    )


def forget_pending_events(conn: Connection, limit: int) -> int:
    """Delete up to `limit` sent outbox rows of customers erased while events about them were unsent (the erasure
    event among them); an erasure none of whose events is unsent any more is then done. Reads the outbox only while
    an erasure is pending (rarely: seconds after each)."""
    if conn.execute(select(_p.customer_id).limit(1)).first() is None:
        return 0
    o = outbox_table.c
    # Done: no event of the customer unsent now. Decided before deleting, so an event sent after this read keeps its
    # erasure pending until the next pass deletes it.
    unsent = exists().where(o.subject == _p.customer_id, o.sent_at.is_(None))
    done = list(conn.execute(select(_p.customer_id).where(~unsent)).scalars())
    deleted = forget_sent_events_of(conn, select(_p.customer_id), limit)
    if deleted < limit and done:
        conn.execute(delete(pending_erasures).where(_p.customer_id.in_(done)))
    return deleted
