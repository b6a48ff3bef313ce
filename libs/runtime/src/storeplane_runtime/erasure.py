"""What a service must do to its kit tables when a customer is erased (GDPR art. 17), beside its own rows.

Two kit tables can hold a copy of personal data a service once wrote:

- the outbox keeps sent events for `OUTBOX_RETENTION_HOURS`; an event about a customer (published with
  `subject=customer_id`) may carry the loyalty card number: `forget_sent_events` deletes the sent ones. Events not
  sent yet are left to go out (consumers must still see them, before the erasure event that follows them);
  `forget_sent_events_of`, run by a sweeper over the recently erased subjects, deletes them (and the erasure event
  itself, which names the card so that loyalty can find the account) once they are sent.
- idempotency keys keep each mutating call's answer for `idempotency.RETENTION`, so a retry gets it again; an answer
  with a customer's profile in it is PII. `rewrite_answers` replaces those answers with ones the caller builds from
  the tombstone: a retry after the erasure then learns the customer is erased, and the request id stays taken (it
  does not register the customer a second time).

The service must know which of its requests touched the customer (the customer service records each
(caller, request_id) with the customer id in its own table, and drops that record here too).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Select, and_, bindparam, delete, select, update
from sqlalchemy.engine import Connection

from storeplane_runtime.tables import idempotency_table, outbox_table

__all__ = ["forget_sent_events", "forget_sent_events_of", "rewrite_answers"]


def forget_sent_events(conn: Connection, subject: str) -> int:
    """Delete the sent outbox rows published with `subject`; returns how many. Unsent rows stay (they go out)."""
    if not subject:
        raise ValueError("forget_sent_events needs a subject: an empty one would match every subject-less event")
    t = outbox_table
    result = conn.execute(delete(t).where(and_(t.c.subject == subject, t.c.sent_at.is_not(None))))
    return int(result.rowcount)


def forget_sent_events_of(conn: Connection, subjects: Select[tuple[str]], limit: int) -> int:
    """Delete up to `limit` sent outbox rows whose subject is one of `subjects` (a one-column select, e.g. the ids
    of customers erased within the outbox retention); returns how many. A `sweeps.Sweeper` step."""
    t = outbox_table
    due = select(t.c.id).where(t.c.sent_at.is_not(None), t.c.subject.in_(subjects)).limit(limit)
    ids = list(conn.execute(due).scalars())
    if ids:
        conn.execute(delete(t).where(t.c.id.in_(ids)))
    return len(ids)


def rewrite_answers(conn: Connection, answers: Iterable[tuple[str, str, bytes]]) -> int:
    """Replace the stored answer of each (caller, request_id) with the given serialised response; returns how many
    keys were still kept (expired ones are gone already)."""
    t = idempotency_table
    statement = (
        update(t)
        .where(and_(t.c.caller == bindparam("a_caller"), t.c.request_id == bindparam("a_request_id")))
        .values(response=bindparam("a_response"))
    )
    rows = [{"a_caller": c, "a_request_id": r, "a_response": body} for c, r, body in answers]
    if not rows:
        return 0
    result = conn.execute(statement, rows)
    return int(result.rowcount)
