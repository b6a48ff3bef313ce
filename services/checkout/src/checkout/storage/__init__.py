"""Storage of the checkout service, one module per concept (tables, items, baskets, sales and returns); callers use
`storage.<function>` with the unit of work's connection."""

from checkout.storage.baskets import (
    basket_store,
    claim_expired,
    find_basket,
    insert_basket,
    save_basket,
)
from checkout.storage.items import find_item, save_item
from checkout.storage.sales import (
    find_return,
    find_sale,
    insert_return,
    insert_sale,
    insert_sales,
    list_sales,
    next_receipt_number,
    next_receipt_numbers,
    sale_of_client_id,
    sale_store,
    sales_of_client_ids,
    save_returned_quantities,
)
from checkout.storage.tables import metadata

__all__ = [
    "basket_store",
    "claim_expired",
    "find_basket",
    "find_item",
    "find_return",
    "find_sale",
    "insert_basket",
    "insert_return",
    "insert_sale",
    "insert_sales",
    "list_sales",
    "metadata",
    "next_receipt_number",
    "next_receipt_numbers",
    "sale_of_client_id",
    "sale_store",
    "sales_of_client_ids",
    "save_basket",
    "save_item",
    "save_returned_quantities",
]
