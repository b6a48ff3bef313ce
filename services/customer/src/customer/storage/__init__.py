"""Storage of the customer service: its tables (and where personal data lives in them: `PII_COLUMNS`) and the
statements on them; callers use `storage.<function>`."""

from customer.storage.constraints import violated_constraint
from customer.storage.customers import (
    card_hash,
    card_was_issued,
    create_customer,
    export_page,
    find_customer,
    first_application,
    issue_card,
    save_profile,
    save_stats,
    taken_key,
    transaction_failed,
)
from customer.storage.erasures import (
    drop_requests,
    forget_pending_events,
    mark_erasure_pending,
    prune_requests,
    record_request,
    requests_of,
)
from customer.storage.tables import (
    PII_COLUMNS,
    UNIQUE_KEYS,
    applied_documents,
    customer_requests,
    customer_spend,
    customers,
    issued_cards,
    metadata,
    pending_erasures,
)

__all__ = [
    "PII_COLUMNS",
    "UNIQUE_KEYS",
    "applied_documents",
    "card_hash",
    "card_was_issued",
    "create_customer",
    "customer_requests",
    "customer_spend",
    "customers",
    "drop_requests",
    "export_page",
    "find_customer",
    "first_application",
    "forget_pending_events",
    "issue_card",
    "issued_cards",
    "mark_erasure_pending",
    "metadata",
    "pending_erasures",
    "prune_requests",
    "record_request",
    "requests_of",
    "save_profile",
    "save_stats",
    "taken_key",
    "transaction_failed",
    "violated_constraint",
]
