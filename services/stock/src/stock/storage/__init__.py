"""Storage of the stock service, one module per concept (tables, items, levels, reservations, audit records);
callers use `storage.<function>`, and every query takes a Connection (hot paths) or a Session."""

from stock.storage.audit import first_application, record_adjustment, record_discrepancies
from stock.storage.items import (
    Shelf,
    barcode_owners,
    find_item,
    find_items,
    find_on_shelf,
    known_skus,
    save_items,
)
from stock.storage.levels import (
    create_levels,
    import_on_hand,
    insert_imported_levels,
    lock_level_keys,
    lock_levels,
    lock_levels_of_items,
    lock_or_create_levels,
    read_levels,
    write_levels,
)
from stock.storage.reservations import (
    claim_expired,
    end_reservation,
    find_reservation,
    lock_for_batch,
    lock_reservations,
    save_reservations,
)
from stock.storage.tables import (
    applied_documents,
    item_barcodes,
    items,
    metadata,
    reservations,
    stock_adjustments,
    stock_discrepancies,
    stock_levels,
)

__all__ = [
    "Shelf",
    "applied_documents",
    "barcode_owners",
    "claim_expired",
    "create_levels",
    "end_reservation",
    "find_item",
    "find_items",
    "find_on_shelf",
    "find_reservation",
    "first_application",
    "import_on_hand",
    "insert_imported_levels",
    "item_barcodes",
    "items",
    "known_skus",
    "lock_for_batch",
    "lock_level_keys",
    "lock_levels",
    "lock_levels_of_items",
    "lock_or_create_levels",
    "lock_reservations",
    "metadata",
    "read_levels",
    "record_adjustment",
    "record_discrepancies",
    "reservations",
    "save_items",
    "save_reservations",
    "stock_adjustments",
    "stock_discrepancies",
    "stock_levels",
    "write_levels",
]
