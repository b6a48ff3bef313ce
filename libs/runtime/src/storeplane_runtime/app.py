"""A service process: its settings, database, gRPC host and background workers, started and stopped as one.

Every service's `main.py` builds a `ServiceApp`; `command_line` gives it `serve` and `migrate`.
The embedded stack starts several apps in one process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from storeplane_runtime.db import Database
from storeplane_runtime.logs import configure_logging
from storeplane_runtime.messaging import Consumers, messaging_workers
from storeplane_runtime.migrations import SchemaError, ensure_schema, upgrade
from storeplane_runtime.operations import OperationsWatch
from storeplane_runtime.server import ServiceHost, ServiceRegistration, run_until_signal
from storeplane_runtime.settings import ServiceSettings, SettingsError, load_settings
from storeplane_runtime.spans import current_service
from storeplane_runtime.status import BASE_ERROR_TABLE, ErrorTable

__all__ = ["ServiceApp", "Worker", "command_line", "migrations_dir"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


class Worker(Protocol):
    """Something that runs beside the gRPC server (outbox relay, event consumer, expiry sweeper)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ServiceApp:
    """One service: gRPC host, optional database (with its migrations) and workers."""

    name: str
    settings: ServiceSettings
    host: ServiceHost
    database: Database | None = None
    migrations: Path | None = None
    workers: list[Worker] = field(default_factory=list)
    consumers: Consumers | None = None  # the event handlers its consumer runs (None: it consumes nothing)

    @classmethod
    def with_database(
        cls,
        name: str,
        settings: ServiceSettings,
        registrations: Callable[[Database], Sequence[ServiceRegistration]],
        *,
        package_file: str,
        error_table: ErrorTable = BASE_ERROR_TABLE,
        consumers: Consumers | None = None,
    ) -> ServiceApp:
        """The usual service: its own database and migrations beside the package, gRPC services on one host,
        its outbox relay and, when `consumers` has handlers, its event consumer (RabbitMQ or in-process bus).

        `registrations(database)` builds the servicers once the database exists, so each gets it in its constructor.
        """
        database = Database(settings.resolved_database_url(), pool_size=settings.resolved_pool_size())
        host = ServiceHost(settings, registrations=registrations(database), error_table=error_table)
        app = cls(name, settings, host, database, migrations_dir(package_file), consumers=consumers)
        app.workers.extend(messaging_workers(name, settings, database, consumers))
        # Operators' gauges: the database pool, the broker's own queue depths, parked events.
        app.workers.append(OperationsWatch(name, database, amqp_url=settings.amqp_url, consumes=bool(consumers)))
        return app

    def servicer(self, kind: type[T]) -> T:
        """The servicer of type `kind` that `registrations` built (wiring that needs it after the fact)."""
        for registration in self.host.registrations:
            if isinstance(registration.servicer, kind):
                return registration.servicer
        raise LookupError(f"{self.name} serves no {kind.__name__}")

    def prepare_schema(self) -> None:
        if self.database is not None and self.migrations is not None:
            ensure_schema(
                self.database.engine, self.migrations, service=self.name, auto_migrate=self.settings.auto_migrate
            )

    def start(self) -> int:
        """Check (or upgrade) the schema, start workers, then serve; returns the gRPC port. The workers' threads
        start as this service's (spans.current_service): in the embedded stack their spans carry its name."""
        self.prepare_schema()
        serving = current_service.set(self.settings.service_name)
        try:
            for worker in self.workers:
                worker.start()
        finally:
            current_service.reset(serving)
        return self.host.start()

    def stop(self, grace: float | None = None) -> None:
        self.host.stop(grace)
        for worker in reversed(self.workers):
            worker.stop()
        if self.database is not None:
            self.database.dispose()


def migrations_dir(package_file: str) -> Path:
    """`services/<name>/migrations`, found from a module inside `services/<name>/src/<name>/`."""
    return Path(package_file).resolve().parents[2] / "migrations"


def command_line(
    name: str,
    settings_cls: type[S],
    create_app: Callable[[S], ServiceApp],
    argv: Sequence[str] | None = None,
    commands: Mapping[str, Callable[[S, list[str]], None]] | None = None,
) -> None:
    """`python -m <name> [serve|migrate]`: serve until SIGTERM/SIGINT, or upgrade the schema and exit; `commands`
    adds a process's own (`python -m gateway render DIR`), each run with the settings and its arguments."""
    extra = dict(commands or {})
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"storeplane {name} service")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate", *extra])
    parser.add_argument("arguments", nargs="*", help="arguments of the command")
    args = parser.parse_args(argv)
    if args.arguments and args.command not in extra:
        parser.error(f"{args.command} takes no arguments")
    try:
        settings = load_settings(settings_cls, name)
        configure_logging(settings.log_level)
        if args.command in extra:
            extra[args.command](settings, list(args.arguments))
            return
        app = create_app(settings)
        if args.command == "migrate":
            if app.database is None or app.migrations is None:
                print(f"{name}: has no database to migrate", file=sys.stderr)
                raise SystemExit(2)
            upgrade(app.database.engine, app.migrations)
            log.info("migrated", extra={"service": name})
            return
        app.start()
    except (SettingsError, SchemaError) as exc:
        print(str(exc.code), file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run_until_signal([app.host])
    for worker in reversed(app.workers):
        worker.stop()
    if app.database is not None:
        app.database.dispose()
