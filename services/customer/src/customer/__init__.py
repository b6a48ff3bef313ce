"""storeplane customer service."""
