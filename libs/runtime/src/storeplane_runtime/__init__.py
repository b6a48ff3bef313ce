"""Shared runtime of the storeplane processes: settings, server bootstrap, database, outbox, clients, telemetry."""
