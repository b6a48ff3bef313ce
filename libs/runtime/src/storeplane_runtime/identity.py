"""Who is calling: the verified identity of the current call (set by the auth interceptor), the key that scopes a
caller's request ids, and the ownership check of resources a call names by id."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from storeplane_runtime.errors import NotFound, StoreNotAllowed

__all__ = [
    "ALL_STORES",
    "ANONYMOUS",
    "Identity",
    "StoreNotAllowed",
    "acting_as",
    "allowed_stores",
    "caller_of",
    "check_owner",
    "check_store",
    "current_identity",
]

ANONYMOUS = "anonymous"
ALL_STORES = "*"


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for: its subject, scopes and the stores it may act for (`*`: all)."""

    subject: str
    scopes: frozenset[str]
    stores: frozenset[str]
    expires_at: float = 0.0

    @property
    def all_stores(self) -> bool:
        return ALL_STORES in self.stores

    def may_act_for(self, store_id: str) -> bool:
        return self.all_stores or store_id in self.stores

    def missing_scopes(self, required: Iterable[str]) -> list[str]:
        return [scope for scope in required if scope not in self.scopes]


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("storeplane_identity", default=None)


def current_identity() -> Identity | None:
    """The verified identity of the call being handled (None outside a call, or where nothing verified one)."""
    return _current.get()


@contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """Handle the code inside as a call of `identity` (the interceptor wraps each handler in it)."""
    token = _current.set(identity)
    try:
        yield
    finally:
        _current.reset(token)


def caller_of(context: grpc.ServicerContext) -> str:
    """The caller a request id is scoped to: the verified token's subject (two callers' keys never collide)."""
    identity = _current.get()
    return identity.subject if identity is not None else ANONYMOUS


def allowed_stores() -> frozenset[str] | None:
    """The stores the current caller may act for; None: all of them (or no verified caller)."""
    identity = _current.get()
    return None if identity is None or identity.all_stores else identity.stores


def check_store(store_id: str) -> None:
    """StoreNotAllowed unless the current caller may act for `store_id` (no identity: nothing to check)."""
    identity = _current.get()
    if identity is not None and not identity.may_act_for(store_id):
        raise StoreNotAllowed(f"not allowed for store {store_id[:64]!r}", metadata={"store_id": store_id[:64]})


def check_owner(owner_store: str | None, *, kind: str, resource_id: str) -> None:
    """The ownership check of a resource named by id (`owner_store` None: no such resource). A caller restricted to
    some stores gets the same STORE_NOT_ALLOWED for another store's resource and for one that does not exist, so ids
    cannot be probed; a caller for all stores learns NOT_FOUND."""
    identity = _current.get()
    if identity is None or identity.all_stores:
        if owner_store is None:
            raise NotFound(f"no {kind} {resource_id[:128]!r}", metadata={f"{kind}_id": resource_id[:128]})
        return
    if owner_store is None or not identity.may_act_for(owner_store):
        raise StoreNotAllowed(
            f"not allowed for {kind} {resource_id[:128]!r}", metadata={f"{kind}_id": resource_id[:128]}
        )
