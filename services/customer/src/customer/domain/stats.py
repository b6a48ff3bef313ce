"""Purchase statistics from checkout's sales and returns. Applied in any order with the same result: counts and
spend are sums, and the last purchase is the sale with the latest time, whenever it arrives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime


@dataclass(frozen=True)
class Purchase:
    """A sale of a known customer: what was paid in money (points excluded), where and when."""

    customer_id: str
    sale_id: str
    store_id: str
    currency: str
    amount_paid: int
    at: datetime


@dataclass(frozen=True)
class Refund:
    """A return of goods a known customer bought: what was refunded in money."""

    customer_id: str
    return_id: str
    currency: str
    amount_refunded: int
    at: datetime


@dataclass(frozen=True)
class PurchaseStats:
    """Sales, returns, spend per currency (paid minus refunded, minor units) and the latest sale's time and store."""

    sale_count: int = 0
    return_count: int = 0
    spend: Mapping[str, int] = field(default_factory=dict)
    last_purchase_at: datetime | None = None
    last_purchase_store_id: str = ""

    def after_purchase(self, purchase: Purchase) -> PurchaseStats:
        spend = dict(self.spend)
        spend[purchase.currency] = spend.get(purchase.currency, 0) + purchase.amount_paid
        last = self.last_purchase_at
        # Two sales at the same time: the greater store id wins, so that the order of arrival never matters.
        later = (
            last is None
            or purchase.at > last
            or (purchase.at == last and purchase.store_id > self.last_purchase_store_id)
        )
        return replace(
            self,
            sale_count=self.sale_count + 1,
            spend=spend,
            last_purchase_at=purchase.at if later else self.last_purchase_at,
            last_purchase_store_id=purchase.store_id if later else self.last_purchase_store_id,
        )

    def after_refund(self, refund: Refund) -> PurchaseStats:
        """A return counts and takes its refund off the spend even before its sale arrived (the sum comes right
        when it does); it never moves the last purchase."""
        spend = dict(self.spend)
        spend[refund.currency] = spend.get(refund.currency, 0) - refund.amount_refunded
        return replace(self, return_count=self.return_count + 1, spend=spend)
