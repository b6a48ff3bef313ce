"""What each RPC requires, read once from its `pos.common.v1.auth` method option: scopes, and where its request
names stores (dotted paths, through repeated fields)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from pos.common.v1 import options_pb2

__all__ = ["MethodRule", "check_path", "method_rules", "stores_named"]


@dataclass(frozen=True)
class MethodRule:
    """The declared authorisation of one RPC (`/pkg.Service/Method`)."""

    method: str
    scopes: tuple[str, ...]
    store_paths: tuple[tuple[str, ...], ...] = ()  # empty: the request names no store (or the RPC is not store-scoped)
    client_streaming: bool = False

    @property
    def store_scoped(self) -> bool:
        return bool(self.store_paths)


def method_rules(services: Iterable[ServiceDescriptor]) -> dict[str, MethodRule]:
    """The rule of every RPC of these services that declares one; an RPC missing from the result is refused."""
    rules = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(options_pb2.auth):
                continue
            declared = options.Extensions[options_pb2.auth]
            if not declared.scopes:
                continue  # "never empty" says the contract: a declaration without scopes declares nothing
            paths: tuple[tuple[str, ...], ...] = ()
            if declared.store_scoped:
                dotted = [declared.store_field or "store_id", *declared.store_fields]
                paths = tuple(tuple(p.split(".")) for p in dotted)
                for path in paths:
                    check_path(method.input_type, path, f"/{service.full_name}/{method.name}")
            name = f"/{service.full_name}/{method.name}"
            rules[name] = MethodRule(name, tuple(declared.scopes), paths, method.client_streaming)
    return rules


def check_path(message_type: object, path: tuple[str, ...], method: str) -> None:
    # A path that names no field would silently check nothing: refuse to start instead.
    current = message_type
    for i, name in enumerate(path):
        field = current.fields_by_name.get(name)  # type: ignore[attr-defined]
        if field is None:
            raise ValueError(f"{method}: store path {'.'.join(path)!r} names no field {name!r}")
        if i < len(path) - 1:
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                raise ValueError(f"{method}: store path {'.'.join(path)!r} goes through a scalar {name!r}")
            current = field.message_type
        elif field.type != FieldDescriptor.TYPE_STRING:
            raise ValueError(f"{method}: store path {'.'.join(path)!r} does not end at a string field")


def stores_named(message: Message, path: tuple[str, ...]) -> list[str]:
    """The store ids at `path` in `message`: every element of a repeated field, nothing under an unset message."""
    values: list[object] = [message]
    for i, name in enumerate(path):
        last = i == len(path) - 1
        found: list[object] = []
        for value in values:
            assert isinstance(value, Message)
            field = value.DESCRIPTOR.fields_by_name[name]
            if field.is_repeated:
                found.extend(getattr(value, name))
            elif last or value.HasField(name):
                found.append(getattr(value, name))
        values = found
    # An empty id names no store: the service's own validation refuses it (INVALID_ARGUMENT, not a denial).
    return [v for v in values if isinstance(v, str) and v]
