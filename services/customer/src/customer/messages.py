"""The contract's messages of domain values: a customer (or its tombstone) and its purchase statistics."""

from __future__ import annotations

from customer.domain import Consent, Customer, PurchaseStats
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2
from storeplane_runtime.timestamps import to_timestamp


def consent_message(consent: Consent) -> customer_pb2.Consent:
    return customer_pb2.Consent(granted=consent.granted, updated_at=to_timestamp(consent.updated_at))


def stats_message(stats: PurchaseStats) -> customer_pb2.PurchaseStats:
    return customer_pb2.PurchaseStats(
        sale_count=stats.sale_count,
        return_count=stats.return_count,
        lifetime_spend=[common_pb2.Money(amount_minor=v, currency_code=c) for c, v in sorted(stats.spend.items())],
        last_purchase_at=to_timestamp(stats.last_purchase_at),
        last_purchase_store_id=stats.last_purchase_store_id,
    )


def customer_message(customer: Customer) -> customer_pb2.Customer:
    """The customer; a tombstone has id, erased, erased_at, times and stats, and every personal field empty."""
    message = customer_pb2.Customer(
        customer_id=customer.customer_id,
        stats=stats_message(customer.stats),
        created_at=to_timestamp(customer.created_at),
        updated_at=to_timestamp(customer.updated_at),
        erased=customer.erased,
        erased_at=to_timestamp(customer.erased_at),
    )
    profile = customer.profile
    if profile is not None:
        message.given_name = profile.given_name
        message.family_name = profile.family_name
        message.email = profile.email
        message.phone = profile.phone
        message.loyalty_card_number = profile.loyalty_card_number
        message.marketing_email.CopyFrom(consent_message(profile.marketing_email))
        message.marketing_sms.CopyFrom(consent_message(profile.marketing_sms))
        message.home_store_id = profile.home_store_id
    return message
