"""storeplane stock service."""
