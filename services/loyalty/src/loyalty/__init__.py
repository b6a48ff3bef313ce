"""storeplane loyalty service."""
