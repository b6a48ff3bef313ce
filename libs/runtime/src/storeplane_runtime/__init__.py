"""storeplane_runtime: the kit every storeplane service is built on (see libs/runtime/README.md).

The public API is the modules named in `__all__`, each with its own `__all__`; import from them by name
(`from storeplane_runtime.errors import Violations`). This package imports nothing itself, so a domain module that
imports `storeplane_runtime.errors` or `storeplane_runtime.clock` loads no gRPC, protobuf or SQL.

- Writing the rules: `errors` (domain errors, `Violations`), `clock` (`utcnow`, `as_utc`), `money` (integer
  roundings, largest-remainder splits, what points are worth).
- Serving: `app` (`ServiceApp`, `command_line`), `settings`, `server` (`ServiceRegistration`), `status` (domain
  errors to gRPC codes), `auth` (bearer tokens, the declared scopes and stores enforced; `auth.client` for callers),
  `identity` (who calls: `current_identity`, `check_owner` for resources named by id), `idempotency`
  (`IdempotentCalls`: a mutating RPC in one line), `batching` (group commit of a hot call), `imports`
  (client-streamed batch imports), `clients` (peer channels), `breaker` (`CircuitBreaker`: fail fast while a peer
  is down), `paging` (AIP-158 page sizes and signed page tokens), `interceptors` (`HandlerWrapper`: a server
  interceptor that wraps each method's handler once; the kit's own: errors, metrics, logs, spans).
- Storing: `db` (`Database`, `UnitOfWork`: state and outbox in one transaction), `tables` (the kit's tables),
  `sql` (dialect helpers), `erasure` (a customer's copies in the kit's tables), `migrations` (Alembic env and the
  kit's tables), `stores` (store configuration).
- Events: `messaging` (`Consumers`, relay, bus), `outbox`, `event_ids`, `timestamps`, `broadcast` (committed
  events to every replica).
- Running and testing: `workers` (`ThreadWorker`), `sweeps` (`Sweeper`: a use case applied to what fell due),
  `telemetry` (the shared metrics, tracing), `operations` (pool, queue and parked-event gauges), `testing` (a
  service on a free port, `deliver`, `published`).

Other modules (`driver`, `deadlines`, `logs`, `span_export`) are the kit's own machinery.
"""

__all__ = [
    "app",
    "auth",
    "batching",
    "breaker",
    "broadcast",
    "clients",
    "clock",
    "db",
    "erasure",
    "errors",
    "event_ids",
    "idempotency",
    "identity",
    "imports",
    "interceptors",
    "messaging",
    "migrations",
    "money",
    "operations",
    "outbox",
    "paging",
    "server",
    "settings",
    "sql",
    "status",
    "stores",
    "sweeps",
    "tables",
    "telemetry",
    "testing",
    "timestamps",
    "workers",
]
