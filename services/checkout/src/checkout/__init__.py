"""storeplane checkout service."""
