"""storeplane gateway: the one door store edges call; routes each call to its service untouched."""
