"""The generated descriptors match the design: RPC names and streaming kinds, auth options,
idempotency keys, event envelopes, pagination, and no floating point anywhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor

UNARY, CLIENT_STREAM, SERVER_STREAM = "unary", "client stream", "server stream"

# ARCHITECTURE.md section 3: these names and streaming kinds are fixed.
EXPECTED_RPCS: dict[str, dict[str, str]] = {
    "pos.checkout.v1.CheckoutService": {
        "OpenBasket": UNARY,
        "GetBasket": UNARY,
        "ScanItem": UNARY,
        "UpdateLineQuantity": UNARY,
        "AttachCustomer": UNARY,
        "RedeemPoints": UNARY,
        "CompleteSale": UNARY,
        "VoidBasket": UNARY,
        "ReturnItems": UNARY,
        "GetSale": UNARY,
        "ListSales": UNARY,
        "UploadOfflineSales": CLIENT_STREAM,
    },
    "pos.stock.v1.StockService": {
        "GetItem": UNARY,
        "GetAvailability": UNARY,
        "Reserve": UNARY,
        "Release": UNARY,
        "AdjustStock": UNARY,
        "ImportItems": CLIENT_STREAM,
        "ImportStockLevels": CLIENT_STREAM,
        "WatchStock": SERVER_STREAM,
    },
    "pos.customer.v1.CustomerService": {
        "RegisterCustomer": UNARY,
        "GetCustomer": UNARY,
        "FindCustomer": UNARY,
        "UpdateCustomer": UNARY,
        "EraseCustomer": UNARY,
        "ExportCustomers": SERVER_STREAM,
    },
    "pos.loyalty.v1.LoyaltyService": {
        "GetAccount": UNARY,
        "QuoteRedemption": UNARY,
        "HoldPoints": UNARY,
        "ReleaseHold": UNARY,
        "ListTransactions": UNARY,
        "AdjustPoints": UNARY,
    },
}

EXPECTED_EVENTS: dict[str, set[str]] = {
    "pos.checkout.v1": {"SaleCompleted", "SaleReturned", "BasketVoided"},
    "pos.stock.v1": {"StockLevelChanged", "StockLow", "ItemUpdated"},
    "pos.customer.v1": {"CustomerRegistered", "CustomerUpdated", "CustomerErased"},
    "pos.loyalty.v1": {"PointsEarned", "PointsRedeemed", "TierChanged"},
}

KNOWN_SCOPES = {
    "checkout.read",
    "checkout.write",
    "stock.read",
    "stock.write",
    "stock.import",
    "customer.read",
    "customer.write",
    "customer.erase",
    "customer.export",
    "loyalty.read",
    "loyalty.write",
    "loyalty.adjust",
}

# Read-only RPCs by verb; every other RPC changes something and needs an idempotency key.
READ_ONLY_VERBS = ("Get", "List", "Find", "Watch", "Export", "Quote")

FLOATING = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
# Well-known types that smuggle a double in.
FLOATING_MESSAGES = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
}


def _kind(method: MethodDescriptor) -> str:
    if method.client_streaming and method.server_streaming:
        return "bidi stream"
    if method.client_streaming:
        return CLIENT_STREAM
    return SERVER_STREAM if method.server_streaming else UNARY


def _methods(pos_files: list[FileDescriptor]) -> Iterator[MethodDescriptor]:
    for file in pos_files:
        for service in file.services_by_name.values():
            yield from service.methods


def _messages(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for message in messages:
        yield message
        yield from _messages(list(message.nested_types))


def _auth(method: MethodDescriptor):  # type: ignore[no-untyped-def]
    from pos.common.v1 import options_pb2

    options = method.GetOptions()
    if not options.HasExtension(options_pb2.auth):
        return None
    return options.Extensions[options_pb2.auth]


def _field_at(message: Descriptor, path: str) -> FieldDescriptor | None:
    field = None
    for name in path.split("."):
        if message is None:
            return None
        field = message.fields_by_name.get(name)
        if field is None:
            return None
        message = field.message_type
    return field


def test_every_designed_rpc_exists_with_its_streaming_kind(pos_files: list[FileDescriptor]) -> None:
    found: dict[str, dict[str, str]] = {}
    for method in _methods(pos_files):
        found.setdefault(method.containing_service.full_name, {})[method.name] = _kind(method)
    assert found == EXPECTED_RPCS


def test_every_rpc_declares_known_scopes_of_its_own_service(pos_files: list[FileDescriptor]) -> None:
    problems = []
    for method in _methods(pos_files):
        auth = _auth(method)
        service_area = method.containing_service.full_name.split(".")[1]  # pos.<area>.v1.XService
        if auth is None or not auth.scopes:
            problems.append(f"{method.full_name}: no (pos.common.v1.auth) option with a scope")
            continue
        for scope in auth.scopes:
            if scope not in KNOWN_SCOPES or not scope.startswith(f"{service_area}."):
                problems.append(f"{method.full_name}: unexpected scope {scope!r}")
    assert not problems, "\n".join(problems)


def _store_paths(auth) -> list[str]:  # type: ignore[no-untyped-def]
    return [auth.store_field or "store_id", *auth.store_fields]


def _paths_to_store_ids(message: Descriptor, prefix: str = "", seen: tuple[str, ...] = ()) -> Iterator[str]:
    """Dotted paths of every field named `store_id` in `message`, through (repeated) message fields."""
    for field in message.fields:
        nested = field.message_type
        if nested is None:
            if field.name == "store_id":
                yield prefix + field.name
        elif nested.full_name not in seen and not nested.full_name.startswith("google.protobuf."):
            yield from _paths_to_store_ids(nested, f"{prefix}{field.name}.", (*seen, nested.full_name))


def test_store_scoped_rpcs_name_a_string_store_field(pos_files: list[FileDescriptor]) -> None:
    problems = []
    for method in _methods(pos_files):
        auth = _auth(method)
        if auth is None:
            continue
        request = method.input_type
        if auth.store_scoped:
            for path in _store_paths(auth):
                field = _field_at(request, path)
                if field is None or field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
                    problems.append(f"{method.full_name}: store field {path!r} missing")
        elif "store_id" in request.fields_by_name:
            problems.append(f"{method.full_name}: request names store_id but is not store_scoped")
        elif auth.store_field or auth.store_fields:
            problems.append(f"{method.full_name}: store fields declared but the RPC is not store_scoped")
    assert not problems, "\n".join(problems)


def test_store_scoped_rpcs_check_every_store_id_the_request_carries(pos_files: list[FileDescriptor]) -> None:
    """A store id the declaration does not name (e.g. in a batch of rows) would escape the store check."""
    problems = []
    for method in _methods(pos_files):
        auth = _auth(method)
        if auth is None or not auth.store_scoped:
            continue
        declared = set(_store_paths(auth))
        for path in _paths_to_store_ids(method.input_type):
            if path not in declared:
                problems.append(f"{method.full_name}: {path!r} is not among the store fields {sorted(declared)}")
    assert not problems, "\n".join(problems)


def test_every_mutating_rpc_takes_a_request_id(pos_files: list[FileDescriptor]) -> None:
    missing = []
    for method in _methods(pos_files):
        if method.name.startswith(READ_ONLY_VERBS):
            continue
        field = method.input_type.fields_by_name.get("request_id")
        if field is None or field.type != FieldDescriptor.TYPE_STRING:
            missing.append(method.full_name)
    assert not missing, f"mutating RPCs without `string request_id`: {missing}"


def test_list_rpcs_paginate(pos_files: list[FileDescriptor]) -> None:
    for method in _methods(pos_files):
        if not method.name.startswith("List"):
            continue
        request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
        assert request["page_size"].type == FieldDescriptor.TYPE_INT32, method.full_name
        assert request["page_token"].type == FieldDescriptor.TYPE_STRING, method.full_name
        assert response["next_page_token"].type == FieldDescriptor.TYPE_STRING, method.full_name


def test_requests_and_responses_are_unique_per_rpc(pos_files: list[FileDescriptor]) -> None:
    seen: dict[str, str] = {}
    for method in _methods(pos_files):
        assert method.input_type.name == f"{method.name}Request", method.full_name
        assert method.output_type.name == f"{method.name}Response", method.full_name
        for message in (method.input_type, method.output_type):
            assert message.full_name not in seen, f"{message.full_name} used by {seen.get(message.full_name)}"
            seen[message.full_name] = method.full_name


def test_events_are_the_designed_ones_and_carry_the_envelope(pos_files: list[FileDescriptor]) -> None:
    events_files = [f for f in pos_files if f.name.endswith("/events.proto")]
    found = {f.package: set(f.message_types_by_name) for f in events_files}
    assert found == EXPECTED_EVENTS
    for file in events_files:
        for event in file.message_types_by_name.values():
            meta = event.fields_by_name.get("meta")
            assert meta is not None, f"{event.full_name}: no `meta` field"
            assert meta.number == 1, f"{event.full_name}: `meta` is not field 1"
            assert meta.message_type.full_name == "pos.common.v1.EventMeta", event.full_name


def test_event_envelope_has_id_time_source_trace_and_store(pos_files: list[FileDescriptor]) -> None:
    from pos.common.v1 import common_pb2

    fields = common_pb2.EventMeta.DESCRIPTOR.fields_by_name
    assert fields["event_id"].type == FieldDescriptor.TYPE_STRING
    assert fields["occurred_at"].message_type.full_name == "google.protobuf.Timestamp"
    for name in ("event_type", "source", "correlation_id", "traceparent", "store_id"):
        assert fields[name].type == FieldDescriptor.TYPE_STRING, name


def test_money_is_integer_minor_units_with_a_currency(pos_files: list[FileDescriptor]) -> None:
    from pos.common.v1 import common_pb2

    fields = common_pb2.Money.DESCRIPTOR.fields_by_name
    assert set(fields) == {"amount_minor", "currency_code"}
    assert fields["amount_minor"].type == FieldDescriptor.TYPE_INT64
    assert fields["currency_code"].type == FieldDescriptor.TYPE_STRING


def test_no_floating_point_anywhere(pos_files: list[FileDescriptor]) -> None:
    offenders = []
    for file in pos_files:
        for message in _messages(list(file.message_types_by_name.values())):
            for field in message.fields:
                if field.type in FLOATING or (
                    field.message_type is not None and field.message_type.full_name in FLOATING_MESSAGES
                ):
                    offenders.append(field.full_name)
    assert not offenders, f"floating point fields (money and rates are integers): {offenders}"


def test_timestamps_are_well_known_timestamps(pos_files: list[FileDescriptor]) -> None:
    """Fields named *_at or *_time hold google.protobuf.Timestamp, never a number or a string."""
    offenders = []
    for file in pos_files:
        for message in _messages(list(file.message_types_by_name.values())):
            for field in message.fields:
                is_time = field.name.endswith(("_at", "_time", "_since"))
                if is_time and getattr(field.message_type, "full_name", "") != "google.protobuf.Timestamp":
                    offenders.append(field.full_name)
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["checkout", "stock", "customer", "loyalty"])
def test_generated_service_modules_import(package: str, pos_files: list[FileDescriptor]) -> None:
    import importlib

    grpc_module = importlib.import_module(f"pos.{package}.v1.{package}_pb2_grpc")
    service = f"{package.capitalize()}Service"
    assert hasattr(grpc_module, f"{service}Servicer")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")


def test_no_field_is_a_python_keyword(pos_files: list[FileDescriptor]) -> None:
    """A field named `return` or `from` can only be reached with getattr in generated Python."""
    import keyword

    offenders = [
        field.full_name
        for file in pos_files
        for message in _messages(list(file.message_types_by_name.values()))
        for field in message.fields
        if keyword.iskeyword(field.name)
    ]
    assert not offenders, offenders
