"""The platform's OpenAPI 3.1 document, made from the proto descriptors and their `google.api.http` annotations: the
HTTP/JSON API the edge (Envoy's gRPC-JSON transcoder in front of the gateway) offers for the four pos.*.v1 services.

Usage: `python -m gateway.openapi [--check] [--out docs/openapi.json] [--descriptor-set PATH]` (what `make openapi`
runs). The descriptor set is `libs/contracts/src/pos/descriptor_set.binpb` (`make proto` writes it, with source info
for the comments); when it is missing and the repository's `protos/` is at hand, it is compiled from there.

Schemas follow the proto3 JSON mapping as the transcoder prints and parses it: lowerCamelCase `json_name`s, 64-bit
integers as decimal strings, enums by name, bytes as base64, Timestamp/Duration/FieldMask as strings, wrappers as
their value, Struct/Value/ListValue as free JSON, Any as an object with "@type". Unknown fields are refused
(`additionalProperties: false`), and nothing is `required`: proto3 JSON leaves every field optional (the services
say in the descriptions which ones they need).
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from pos.common.v1 import options_pb2

__all__ = [
    "DESCRIPTOR_SET_NAME",
    "SERVICES",
    "build_document",
    "compile_descriptor_set",
    "load_descriptor_set",
    "main",
    "render",
]

SERVICES = (
    "pos.checkout.v1.CheckoutService",
    "pos.stock.v1.StockService",
    "pos.customer.v1.CustomerService",
    "pos.loyalty.v1.LoyaltyService",
)
DESCRIPTOR_SET_NAME = "descriptor_set.binpb"
SERVER_URL = "http://localhost:50050"
SECURITY_SCHEME = "bearerAuth"
IDEMPOTENCY_FIELD = "request_id"
REF = "#/components/schemas/"
ANY_TYPE_PREFIX = "type.googleapis.com/"
# The google.rpc error details the services send in google.rpc.Status.details (storeplane_runtime.errors).
ERROR_DETAILS = (
    "google.rpc.BadRequest",
    "google.rpc.ErrorInfo",
    "google.rpc.PreconditionFailure",
    "google.rpc.RetryInfo",
)

FDP = descriptor_pb2.FieldDescriptorProto
# SourceCodeInfo path numbers (descriptor.proto field numbers).
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

INT64_TYPES = {FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64}
UINT64_TYPES = {FDP.TYPE_UINT64, FDP.TYPE_FIXED64}
INT32_TYPES = {FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32}
UINT32_TYPES = {FDP.TYPE_UINT32, FDP.TYPE_FIXED32}


def _int64() -> dict[str, Any]:
    return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}


def _uint64() -> dict[str, Any]:
    return {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}


def _number(fmt: str) -> dict[str, Any]:
    return {
        "oneOf": [
            {"type": "number", "format": fmt},
            {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
        ]
    }


def _scalar(field_type: int) -> dict[str, Any]:
    if field_type in INT64_TYPES:
        return _int64()
    if field_type in UINT64_TYPES:
        return _uint64()
    if field_type in INT32_TYPES:
        return {"type": "integer", "format": "int32"}
    if field_type in UINT32_TYPES:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
    if field_type == FDP.TYPE_DOUBLE:
        return _number("double")
    if field_type == FDP.TYPE_FLOAT:
        return _number("float")
    if field_type == FDP.TYPE_BOOL:
        return {"type": "boolean"}
    if field_type == FDP.TYPE_STRING:
        return {"type": "string"}
    if field_type == FDP.TYPE_BYTES:
        return {"type": "string", "format": "byte", "contentEncoding": "base64"}
    raise ValueError(f"not a scalar field type: {field_type}")


def _wrapper(inner: dict[str, Any], what: str) -> dict[str, Any]:
    schema = dict(inner)
    if "type" in schema:
        schema["type"] = [schema["type"], "null"]
    schema["description"] = f"{what} (google.protobuf wrapper: the bare value; null or absent = unset)."
    return schema


# Well-known types, inlined where used (their JSON form is not an object of their fields).
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 UTC timestamp, e.g. 2024-05-01T12:30:00Z (fractions of a second up to 9 digits).",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "description": 'Duration in seconds with the suffix "s", e.g. "900s" or "1.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated field paths in lowerCamelCase, e.g. "email,phone,marketingConsent".',
    },
    "google.protobuf.Struct": {
        "type": "object",
        "additionalProperties": True,
        "description": "Any JSON object.",
    },
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}, "description": "Any JSON array."},
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "google.protobuf.DoubleValue": _wrapper({"type": "number", "format": "double"}, "Double"),
    "google.protobuf.FloatValue": _wrapper({"type": "number", "format": "float"}, "Float"),
    "google.protobuf.Int64Value": _wrapper(_int64(), "64-bit integer as a decimal string"),
    "google.protobuf.UInt64Value": _wrapper(_uint64(), "Unsigned 64-bit integer as a decimal string"),
    "google.protobuf.Int32Value": _wrapper({"type": "integer", "format": "int32"}, "32-bit integer"),
    "google.protobuf.UInt32Value": _wrapper(
        {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}, "Unsigned 32-bit integer"
    ),
    "google.protobuf.BoolValue": _wrapper({"type": "boolean"}, "Boolean"),
    "google.protobuf.StringValue": _wrapper({"type": "string"}, "String"),
    "google.protobuf.BytesValue": _wrapper({"type": "string", "format": "byte", "contentEncoding": "base64"}, "Bytes"),
}
ANY = "google.protobuf.Any"
ANY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        'A message of any type: "@type" is its type URL (type.googleapis.com/<full message name>), the other '
        "properties are the message's own fields in their JSON form (a well-known type with a non-object JSON form "
        'carries it in "value").'
    ),
    "properties": {"@type": {"type": "string", "description": "Type URL of the message."}},
    "required": ["@type"],
    "additionalProperties": True,
}

# Error responses: HTTP status -> (component name, gRPC codes mapped to it as the transcoder maps them).
ERROR_RESPONSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "400": ("BadRequest", ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE")),
    "401": ("Unauthorized", ("UNAUTHENTICATED",)),
    "403": ("Forbidden", ("PERMISSION_DENIED",)),
    "404": ("NotFound", ("NOT_FOUND",)),
    "409": ("Conflict", ("ALREADY_EXISTS", "ABORTED")),
    "429": ("TooManyRequests", ("RESOURCE_EXHAUSTED",)),
    "500": ("InternalServerError", ("UNKNOWN", "INTERNAL", "DATA_LOSS")),
    "501": ("NotImplemented", ("UNIMPLEMENTED",)),
    "503": ("ServiceUnavailable", ("UNAVAILABLE",)),
    "504": ("GatewayTimeout", ("DEADLINE_EXCEEDED",)),
}
ERROR_NOTES = {
    "400": "Bad input (a google.rpc.BadRequest detail names each field, by request path), or a state that does not "
    "allow the call (an ErrorInfo reason such as BASKET_NOT_OPEN; a PreconditionFailure says what is short).",
    "401": "No bearer token, or one that is not acceptable (ErrorInfo reason, e.g. TOKEN_EXPIRED).",
    "403": "The token lacks a scope the operation requires, or its `stores` claim does not allow the store "
    "(ErrorInfo reason, e.g. STORE_NOT_ALLOWED).",
    "404": "What the request names does not exist (ErrorInfo reason, e.g. CUSTOMER_NOT_FOUND).",
    "409": "A duplicate (e.g. EMAIL_TAKEN) or a concurrent change.",
    "429": "The caller is over its rate budget (ErrorInfo reason RATE_LIMITED); the RetryInfo detail says when to try "
    "again.",
    "500": "A fault of the platform.",
    "501": "The operation is not implemented by the service answering.",
    "503": "A service is down or unreachable; retrying later is safe for idempotent calls.",
    "504": "The call's deadline passed.",
}
# Refusals of the edge's own filters before the transcoder (jwt_authn, the anonymous rate limit): Envoy's local reply.
EDGE_REFUSALS = {
    "401": "When the edge itself refuses the token (missing, malformed, bad signature, expired), before transcoding, "
    "the body is Envoy's short plain-text reason instead.",
    "403": "When the edge itself refuses the token (e.g. audience not allowed), before transcoding, the body is "
    "Envoy's short plain-text reason instead.",
    "429": "Calls without a token are limited per client address by the edge itself, before transcoding: that 429 "
    "has a plain-text body instead.",
}
CODE_TABLE = (
    "| gRPC code | HTTP status |\n| --- | --- |\n"
    "| OK | 200 |\n| INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE | 400 |\n| UNAUTHENTICATED | 401 |\n"
    "| PERMISSION_DENIED | 403 |\n| NOT_FOUND | 404 |\n| ALREADY_EXISTS, ABORTED | 409 |\n"
    "| RESOURCE_EXHAUSTED | 429 |\n| CANCELLED | 499 |\n| UNKNOWN, INTERNAL, DATA_LOSS | 500 |\n"
    "| UNIMPLEMENTED | 501 |\n| UNAVAILABLE | 503 |\n| DEADLINE_EXCEEDED | 504 |"
)


# ---------------------------------------------------------------------------------------------------------------------
# Descriptors


@dataclass
class _Message:
    name: str  # full name, no leading dot
    proto: descriptor_pb2.DescriptorProto
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]


@dataclass
class _Enum:
    name: str
    proto: descriptor_pb2.EnumDescriptorProto
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]


@dataclass
class _Index:
    messages: dict[str, _Message] = field(default_factory=dict)
    enums: dict[str, _Enum] = field(default_factory=dict)
    services: dict[str, tuple[descriptor_pb2.ServiceDescriptorProto, descriptor_pb2.FileDescriptorProto, int]] = field(
        default_factory=dict
    )
    comments: dict[tuple[str, tuple[int, ...]], str] = field(default_factory=dict)

    def comment(self, file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
        return self.comments.get((file.name, path), "")


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    # Paragraphs as Markdown: keep line breaks where a line is indented (code, lists) or blank.
    return "\n".join(line.rstrip() for line in lines).strip()


def _index(descriptor_set: descriptor_pb2.FileDescriptorSet) -> _Index:
    index = _Index()
    for file in sorted(descriptor_set.file, key=lambda f: f.name):
        for location in file.source_code_info.location:
            if location.leading_comments:
                index.comments[(file.name, tuple(location.path))] = _clean_comment(location.leading_comments)
        prefix = file.package + "." if file.package else ""

        def add_messages(
            messages: Iterable[descriptor_pb2.DescriptorProto],
            scope: str,
            path: tuple[int, ...],
            file: descriptor_pb2.FileDescriptorProto = file,
        ) -> None:
            for i, message in enumerate(messages):
                name = scope + message.name
                index.messages[name] = _Message(name, message, file, (*path, i))
                for j, enum in enumerate(message.enum_type):
                    index.enums[f"{name}.{enum.name}"] = _Enum(
                        f"{name}.{enum.name}", enum, file, (*path, i, MESSAGE_ENUM, j)
                    )
                add_messages(message.nested_type, name + ".", (*path, i, MESSAGE_NESTED))

        add_messages(file.message_type, prefix, (FILE_MESSAGE,))
        for j, enum in enumerate(file.enum_type):
            index.enums[prefix + enum.name] = _Enum(prefix + enum.name, enum, file, (FILE_ENUM, j))
        for k, service in enumerate(file.service):
            index.services[prefix + service.name] = (service, file, k)
    return index


def _method_options(method: descriptor_pb2.MethodDescriptorProto) -> descriptor_pb2.MethodOptions:
    """The method's options parsed again, so that the extensions the imported modules registered are read."""
    return descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())


def method_auth(method: descriptor_pb2.MethodDescriptorProto) -> options_pb2.MethodAuth | None:
    """The method's `(pos.common.v1.auth)` option, or None when it has none."""
    options = _method_options(method)
    if not options.HasExtension(options_pb2.auth):
        return None
    auth: options_pb2.MethodAuth = options.Extensions[options_pb2.auth]
    return auth


def http_rules(method: descriptor_pb2.MethodDescriptorProto) -> list[http_pb2.HttpRule]:
    """The method's `google.api.http` rule followed by its additional bindings; empty when it has none."""
    options = _method_options(method)
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def _rule_verb_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError("HttpRule without a pattern")
    if kind == "custom":
        return rule.custom.kind.lower(), rule.custom.path
    return kind, getattr(rule, kind)


# ---------------------------------------------------------------------------------------------------------------------
# Path templates (google/api/http.proto):
# Template = "/" Segments [ Verb ]; Variable = "{" FieldPath [ "=" Segments ] "}"


@dataclass
class _Variable:
    field_path: str
    pattern: str  # the segments it matches, "*" by default


_TEMPLATE_TOKEN = re.compile(r"\{([^{}=]+)(?:=([^{}]+))?\}")


def parse_template(template: str) -> tuple[str, list[_Variable]]:
    """The OpenAPI path of an http rule's template (variables as `{field.path}`) and its variables."""
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} does not start with /")
    variables: list[_Variable] = []

    def replace(match: re.Match[str]) -> str:
        field_path, segments = match.group(1).strip(), (match.group(2) or "*").strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", field_path):
            raise ValueError(f"path template {template!r}: {field_path!r} is not a field path")
        variables.append(_Variable(field_path, segments))
        return "{" + field_path + "}"

    path = _TEMPLATE_TOKEN.sub(replace, template)
    literal = _TEMPLATE_TOKEN.sub("", template)
    if "*" in literal or "{" in literal or "}" in literal:
        raise ValueError(f"path template {template!r}: wildcards outside a variable cannot be documented")
    return path, variables


def _segments_pattern(segments: str) -> str | None:
    """A regular expression for a variable's value when it matches more than one plain segment, else None."""
    if segments == "*":
        return None
    parts = []
    for segment in segments.split("/"):
        if segment == "**":
            parts.append(".*")
        elif segment == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return "^" + "/".join(parts) + "$"


# ---------------------------------------------------------------------------------------------------------------------
# Schemas


def _first_sentence(text: str) -> str:
    paragraph = text.split("\n\n")[0].replace("\n", " ").strip()
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    sentence = match.group(1) if match else paragraph
    return sentence if len(sentence) <= 160 else sentence[:157].rstrip() + "..."


class _Schemas:
    def __init__(self, index: _Index) -> None:
        self.index = index
        self.schemas: dict[str, dict[str, Any]] = {}
        self._pending: list[str] = []

    # References -------------------------------------------------------------------------------------------------------

    def type_ref(self, type_name: str) -> dict[str, Any]:
        name = type_name.lstrip(".")
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        if name == ANY:
            self.schemas.setdefault(ANY, ANY_SCHEMA)
            return {"$ref": REF + ANY}
        if name not in self.index.messages and name not in self.index.enums:
            raise ValueError(f"type {name} is not in the descriptor set")
        if name not in self.schemas and name not in self._pending:
            self._pending.append(name)
        return {"$ref": REF + name}

    def resolve(self) -> None:
        while self._pending:
            name = self._pending.pop()
            if name in self.schemas:
                continue
            if name in self.index.enums:
                self.schemas[name] = self.enum_schema(self.index.enums[name])
            else:
                self.schemas[name] = self.message_schema(self.index.messages[name])

    # Fields -----------------------------------------------------------------------------------------------------------

    def map_entry(self, fdp: descriptor_pb2.FieldDescriptorProto) -> _Message | None:
        if fdp.type != FDP.TYPE_MESSAGE or fdp.label != FDP.LABEL_REPEATED:
            return None
        entry = self.index.messages.get(fdp.type_name.lstrip("."))
        return entry if entry is not None and entry.proto.options.map_entry else None

    def value_schema(self, fdp: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        """The schema of one value of the field (an element, for a repeated field)."""
        if fdp.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM, FDP.TYPE_GROUP):
            return self.type_ref(fdp.type_name)
        return _scalar(fdp.type)

    def field_schema(self, fdp: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        entry = self.map_entry(fdp)
        if entry is not None:
            key, value = entry.proto.field[0], entry.proto.field[1]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.value_schema(value)}
            if key.type != FDP.TYPE_STRING:
                kind = "true or false" if key.type == FDP.TYPE_BOOL else "decimal integers"
                schema["propertyNames"] = {"pattern": "^(true|false)$" if key.type == FDP.TYPE_BOOL else "^-?[0-9]+$"}
                schema["description"] = f"Map keys are {kind} written as strings."
            return schema
        if fdp.label == FDP.LABEL_REPEATED:
            return {"type": "array", "items": self.value_schema(fdp)}
        return self.value_schema(fdp)

    # Messages and enums -----------------------------------------------------------------------------------------------

    def enum_schema(self, enum: _Enum) -> dict[str, Any]:
        lines = []
        for i, value in enumerate(enum.proto.value):
            note = self.index.comment(enum.file, (*enum.path, ENUM_VALUE, i)).replace("\n", " ")
            lines.append(f"- `{value.name}`" + (f": {note}" if note else ""))
        description = self.index.comment(enum.file, enum.path)
        description = (description + "\n\n" if description else "") + "\n".join(lines)
        return {
            "type": "string",
            "title": enum.name.rsplit(".", 1)[-1],
            "description": description,
            "enum": [value.name for value in enum.proto.value],
        }

    def property_schema(self, message: _Message, i: int, fdp: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        schema = self.field_schema(fdp)
        notes = []
        comment = self.index.comment(message.file, (*message.path, MESSAGE_FIELD, i))
        if comment:
            notes.append(comment)
        if fdp.HasField("oneof_index") and not fdp.proto3_optional:
            oneof = message.proto.oneof_decl[fdp.oneof_index]
            members = [
                f"`{f.json_name}`"
                for f in message.proto.field
                if f.HasField("oneof_index") and f.oneof_index == fdp.oneof_index
            ]
            notes.append(f"Member of oneof `{oneof.name}`: set at most one of {', '.join(members)}.")
        if fdp.proto3_optional:
            notes.append("Optional (presence is tracked): absent means unset, not the default value.")
        if notes:
            schema["description"] = "\n\n".join(notes)
        if comment.startswith("Output only"):
            schema["readOnly"] = True
        if fdp.options.deprecated:
            schema["deprecated"] = True
        return schema

    def message_schema(self, message: _Message, *, omit: Iterable[str] = ()) -> dict[str, Any]:
        omitted = set(omit)
        properties: dict[str, Any] = {}
        for i, fdp in enumerate(message.proto.field):
            if fdp.name in omitted:
                continue
            properties[fdp.json_name] = self.property_schema(message, i, fdp)
        schema: dict[str, Any] = {
            "type": "object",
            "title": message.name.rsplit(".", 1)[-1],
            "properties": properties,
            "additionalProperties": False,
        }
        description = self.index.comment(message.file, message.path)
        oneofs = self._oneofs(message, omitted)
        if oneofs:
            lines = [f"- `{name}`: at most one of {', '.join(f'`{m}`' for m in members)}" for name, members in oneofs]
            description = (description + "\n\n" if description else "") + "Oneofs:\n" + "\n".join(lines)
            # At most one member: each member present forbids the members after it.
            schema["dependentSchemas"] = {
                a: {"properties": {b: False for b in members[k + 1 :]}}
                for _, members in oneofs
                for k, a in enumerate(members[:-1])
            }
            schema["x-oneofs"] = {name: members for name, members in oneofs}
        if description:
            schema["description"] = description
        return schema

    @staticmethod
    def _oneofs(message: _Message, omitted: set[str]) -> list[tuple[str, list[str]]]:
        result = []
        for k, oneof in enumerate(message.proto.oneof_decl):
            members = [
                f.json_name
                for f in message.proto.field
                if f.HasField("oneof_index") and f.oneof_index == k and not f.proto3_optional and f.name not in omitted
            ]
            if len(members) > 1:
                result.append((oneof.name, members))
        return result

    def body_schema(self, message_name: str, path_fields: list[str]) -> dict[str, Any]:
        """The request message without the fields bound by the path (dotted paths descend into message fields)."""
        if not path_fields:
            return self.type_ref("." + message_name)
        message = self.index.messages[message_name]
        top = {p.split(".", 1)[0] for p in path_fields if "." not in p}
        schema = self.message_schema(message, omit=top)
        nested: dict[str, list[str]] = {}
        for p in path_fields:
            if "." in p:
                head, rest = p.split(".", 1)
                nested.setdefault(head, []).append(rest)
        for head, rests in sorted(nested.items()):
            fdp = next(f for f in message.proto.field if f.name == head)
            inner = self.body_schema(fdp.type_name.lstrip("."), rests)
            description = schema["properties"][fdp.json_name].get("description")
            schema["properties"][fdp.json_name] = {**inner, **({"description": description} if description else {})}
        schema["description"] = f"{message_name} without the fields bound by the path ({', '.join(path_fields)})." + (
            "\n\n" + schema["description"] if schema.get("description") else ""
        )
        return schema


# ---------------------------------------------------------------------------------------------------------------------
# Operations


def _resolve_field(index: _Index, message_name: str, dotted: str) -> descriptor_pb2.FieldDescriptorProto:
    message = index.messages[message_name]
    head, _, rest = dotted.partition(".")
    fdp = next((f for f in message.proto.field if f.name == head), None)
    if fdp is None:
        raise ValueError(f"{message_name} has no field {head!r}")
    if not rest:
        return fdp
    if fdp.type != FDP.TYPE_MESSAGE or fdp.label == FDP.LABEL_REPEATED:
        raise ValueError(f"{message_name}.{head} is not a singular message field: {dotted!r} cannot descend into it")
    return _resolve_field(index, fdp.type_name.lstrip("."), rest)


def _resolve_owner(index: _Index, message_name: str, dotted: str) -> _Message:
    """The message declaring the last field of a dotted path (resolved by _resolve_field before)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return index.messages[message_name]
    fdp = next(f for f in index.messages[message_name].proto.field if f.name == head)
    return _resolve_owner(index, fdp.type_name.lstrip("."), rest)


QUERY_WELL_KNOWN = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *(name for name in WELL_KNOWN if name.endswith("Value") and name not in ("google.protobuf.Value",)),
}


def _query_parameters(
    schemas: _Schemas, message_name: str, bound: set[str], prefix: str = "", json_prefix: str = "", depth: int = 0
) -> Iterator[dict[str, Any]]:
    """Query parameters for the message's fields not bound elsewhere; message fields as dotted names of their leaves.
    Maps, repeated messages and free JSON (Struct, Value, Any) cannot be sent as query parameters."""
    message = schemas.index.messages[message_name]
    # A oneof with a member bound elsewhere (the path): its other members would clear that binding.
    taken = {
        f.oneof_index
        for f in message.proto.field
        if f.HasField("oneof_index") and not f.proto3_optional and prefix + f.name in bound
    }
    for i, fdp in enumerate(message.proto.field):
        path, json_path = prefix + fdp.name, json_prefix + fdp.json_name
        if path in bound or schemas.map_entry(fdp) is not None:
            continue
        if fdp.HasField("oneof_index") and not fdp.proto3_optional and fdp.oneof_index in taken:
            continue
        if any(b.startswith(path + ".") for b in bound) or (
            fdp.type == FDP.TYPE_MESSAGE and fdp.type_name.lstrip(".") not in QUERY_WELL_KNOWN
        ):
            if fdp.label == FDP.LABEL_REPEATED or fdp.type_name.lstrip(".") in WELL_KNOWN or depth >= 4:
                continue
            if fdp.type_name.lstrip(".") == ANY:
                continue
            yield from _query_parameters(
                schemas, fdp.type_name.lstrip("."), bound, path + ".", json_path + ".", depth + 1
            )
            continue
        schema = schemas.property_schema(message, i, fdp)
        description = schema.pop("description", None)
        schema.pop("readOnly", None)
        deprecated = schema.pop("deprecated", False)
        parameter: dict[str, Any] = {"name": json_path, "in": "query", "required": False, "schema": schema}
        if description:
            parameter["description"] = description
        if deprecated:
            parameter["deprecated"] = True
        if fdp.label == FDP.LABEL_REPEATED:
            parameter["style"], parameter["explode"] = "form", True
        yield parameter


def _security_text(auth: options_pb2.MethodAuth | None) -> str:
    if auth is None:
        return "This RPC declares no `(pos.common.v1.auth)` option: every call is refused."
    scopes = ", ".join(f"`{s}`" for s in auth.scopes)
    text = f"Required scopes: {scopes} (all of them)."
    if auth.store_scoped:
        fields = [auth.store_field or "store_id", *auth.store_fields]
        text += (
            " Store-scoped: the token's `stores` claim must allow the store named at "
            + ", ".join(f"`{f}`" for f in fields)
            + ' ("*" allows every store).'
        )
    return text


@dataclass
class _Binding:
    service: str
    method: descriptor_pb2.MethodDescriptorProto
    verb: str
    path: str
    operation: dict[str, Any]


def _operation(
    schemas: _Schemas,
    service_name: str,
    service_file: descriptor_pb2.FileDescriptorProto,
    method_path: tuple[int, ...],
    method: descriptor_pb2.MethodDescriptorProto,
    rule: http_pb2.HttpRule,
    binding: int,
) -> tuple[str, str, dict[str, Any]]:
    index = schemas.index
    short_service = service_name.rsplit(".", 1)[-1]
    request, response = method.input_type.lstrip("."), method.output_type.lstrip(".")
    verb, template = _rule_verb_path(rule)
    where = f"{service_name}.{method.name} ({verb.upper()} {template})"
    try:
        path, variables = parse_template(template)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if verb not in ("get", "put", "post", "delete", "patch"):
        raise ValueError(f"{where}: HTTP method {verb!r} cannot be documented")

    parameters: list[dict[str, Any]] = []
    path_fields = []
    for variable in variables:
        try:
            fdp = _resolve_field(index, request, variable.field_path)
        except ValueError as exc:
            raise ValueError(f"{where}: path variable {{{variable.field_path}}}: {exc}") from None
        if fdp.label == FDP.LABEL_REPEATED or (
            fdp.type == FDP.TYPE_MESSAGE and fdp.type_name.lstrip(".") not in QUERY_WELL_KNOWN
        ):
            raise ValueError(f"{where}: path variable {{{variable.field_path}}} is not a singular scalar field")
        if variable.field_path in path_fields:
            raise ValueError(f"{where}: path variable {{{variable.field_path}}} bound twice")
        path_fields.append(variable.field_path)
        schema = schemas.value_schema(fdp)
        owner = _resolve_owner(index, request, variable.field_path)
        comment = index.comment(owner.file, (*owner.path, MESSAGE_FIELD, list(owner.proto.field).index(fdp)))
        description = (comment + "\n\n" if comment else "") + f"Request field `{variable.field_path}`."
        pattern = _segments_pattern(variable.pattern)
        if pattern is not None:
            schema = {**schema, "pattern": pattern}
            description += f" Matches `{variable.pattern}` (several path segments, `/` unescaped)."
        parameters.append(
            {"name": variable.field_path, "in": "path", "required": True, "schema": schema, "description": description}
        )

    body = rule.body
    client_streaming, server_streaming = method.client_streaming, method.server_streaming
    request_body: dict[str, Any] | None = None
    if body:
        if body == "*":
            body_schema = schemas.body_schema(request, path_fields)
            bound = None
        else:
            try:
                body_field = _resolve_field(index, request, body)
            except ValueError as exc:
                raise ValueError(f"{where}: body {body!r}: {exc}") from None
            if "." in body:
                raise ValueError(f"{where}: body {body!r} must name a top-level field")
            body_schema = schemas.field_schema(body_field)
            bound = {*path_fields, body}
        if client_streaming:
            content_schema: dict[str, Any] = {
                "type": "array",
                "items": body_schema,
                "description": (
                    "The client stream: a JSON array whose elements are the stream's messages, in order. Path and "
                    "query parameters apply to every message."
                ),
            }
        else:
            content_schema = body_schema
        request_body = {"required": True, "content": {"application/json": {"schema": content_schema}}}
        request_body["description"] = (
            f"A JSON array of {request} messages (the client stream)."
            if client_streaming
            else (f"The request message {request}" + ("." if body == "*" else f"'s field `{body}`."))
        )
    else:
        bound = set(path_fields)
        if client_streaming:
            raise ValueError(f"{where}: a client-streaming RPC needs a body")
    if bound is not None:
        parameters.extend(_query_parameters(schemas, request, bound))

    request_fields = {f.name for f in index.messages[request].proto.field}
    if IDEMPOTENCY_FIELD in request_fields:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})

    if rule.response_body:
        try:
            response_field = _resolve_field(index, response, rule.response_body)
        except ValueError as exc:
            raise ValueError(f"{where}: response_body {rule.response_body!r}: {exc}") from None
        response_schema = schemas.field_schema(response_field)
    else:
        response_schema = schemas.type_ref("." + response)
    response_comment = index.comment(index.messages[response].file, index.messages[response].path)
    if server_streaming:
        ok = {
            "description": (
                f"A stream of {response} messages as newline-delimited JSON: each line is one message, printed "
                "as the schema says, with no wrapper object. The stream ends when the server ends the call; an "
                "error before the first message is an error response as below, one after it ends the stream "
                "(grpc-status and grpc-message trailers)."
            ),
            "content": {"application/x-ndjson": {"schema": response_schema}},
        }
    else:
        ok = {
            "description": _first_sentence(response_comment) if response_comment else f"The {response} message.",
            "content": {"application/json": {"schema": response_schema}},
        }
    responses: dict[str, Any] = {"200": ok}
    for status, (component, _) in ERROR_RESPONSES.items():
        responses[status] = {"$ref": f"#/components/responses/{component}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}

    auth = method_auth(method)
    scopes = sorted(auth.scopes) if auth is not None else []
    comment = index.comment(service_file, method_path)
    description_parts = [comment] if comment else []
    if client_streaming:
        description_parts.append(
            "Client-streaming RPC: the request body is a JSON array of request messages, sent to the service as the "
            "stream's messages in array order."
        )
    if server_streaming:
        description_parts.append(
            "Server-streaming RPC: the response is `application/x-ndjson`, one JSON message per line, sent as the "
            "service streams them."
        )
    description_parts.append(_security_text(auth))
    description_parts.append(f"gRPC: `{service_name}/{method.name}`.")
    operation: dict[str, Any] = {
        "operationId": f"{short_service}_{method.name}" + (f"_{binding}" if binding else ""),
        "tags": [short_service],
        "summary": _first_sentence(comment) if comment else method.name,
        "description": "\n\n".join(description_parts),
        "security": [{SECURITY_SCHEME: scopes}],
        "x-required-scopes": scopes,
        "x-grpc-method": f"{service_name}/{method.name}",
        "responses": responses,
    }
    if client_streaming or server_streaming:
        operation["x-grpc-streaming"] = (
            "bidi" if client_streaming and server_streaming else ("client" if client_streaming else "server")
        )
    if parameters:
        operation["parameters"] = parameters
    if request_body is not None:
        operation["requestBody"] = request_body
    if method.options.deprecated:
        operation["deprecated"] = True
    return verb, path, operation


def _normalized(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _merge_paths(bindings: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Operations by OpenAPI path. Templates equal up to their variables' names (`/v1/customers/{customer_id}` and
    `/v1/customers/{customer.customer_id}`) are one path in OpenAPI: they share the names of the one with the
    simplest names, each parameter's description still naming the request field it binds."""
    groups: dict[str, list[str]] = {}
    for path, _, _ in bindings:
        group = groups.setdefault(_normalized(path), [])
        if path not in group:
            group.append(path)
    canonical = {path: min(group, key=lambda p: (p.count("."), p)) for group in groups.values() for path in group}
    paths: dict[str, dict[str, Any]] = {}
    for path, verb, operation in bindings:
        target = canonical[path]
        if target != path:
            renames = dict(zip(re.findall(r"\{([^}]*)\}", path), re.findall(r"\{([^}]*)\}", target), strict=True))
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path":
                    parameter["name"] = renames[parameter["name"]]
        paths.setdefault(target, {})[verb] = operation
    return {path: dict(sorted(ops.items())) for path, ops in sorted(paths.items())}


# ---------------------------------------------------------------------------------------------------------------------
# The document


def _components(schemas: _Schemas) -> dict[str, Any]:
    details = []
    mapping = {}
    for name in ERROR_DETAILS:
        # The detail as it appears in google.rpc.Status.details: a google.protobuf.Any, "@type" beside its fields.
        base = schemas.message_schema(schemas.index.messages[name])
        description = base.get("description", "")
        schemas.schemas[name] = {
            **base,
            "description": f"A {name} error detail, in its google.protobuf.Any JSON form."
            + (f"\n\n{description}" if description else ""),
            "properties": {
                "@type": {"type": "string", "const": ANY_TYPE_PREFIX + name, "description": "Type URL of the detail."},
                **base["properties"],
            },
            "required": ["@type"],
        }
        details.append({"$ref": REF + name})
        mapping[ANY_TYPE_PREFIX + name] = REF + name
    schemas.resolve()
    schemas.schemas["google.rpc.Status"] = {
        "type": "object",
        "title": "Status",
        "description": (
            "The error body: the gRPC status of the failed call (google.rpc.Status in its JSON form), as the edge "
            "renders it. The HTTP status follows from `code`:\n\n" + CODE_TABLE
        ),
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The gRPC status code (google.rpc.Code), e.g. 3 = INVALID_ARGUMENT, 5 = NOT_FOUND.",
            },
            "message": {"type": "string", "description": "A developer-facing message in English."},
            "details": {
                "type": "array",
                "description": 'Machine-readable details, each a google.protobuf.Any with its "@type".',
                "items": {
                    "oneOf": details,
                    "discriminator": {"propertyName": "@type", "mapping": mapping},
                },
            },
        },
        "additionalProperties": False,
    }
    error_content = {"application/json": {"schema": {"$ref": REF + "google.rpc.Status"}}}
    responses: dict[str, Any] = {}
    for status, (component, codes) in ERROR_RESPONSES.items():
        response: dict[str, Any] = {
            "description": f"gRPC {', '.join(codes)}. {ERROR_NOTES[status]}",
            "content": error_content,
        }
        if status in EDGE_REFUSALS:
            response["description"] += " " + EDGE_REFUSALS[status]
            response["content"] = {**error_content, "text/plain": {"schema": {"type": "string"}}}
        if status == "429":
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again (the RetryInfo detail's retryDelay says the "
                    "same, to the millisecond).",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        responses[component] = response
    responses["Error"] = {
        "description": "Any other failure, e.g. CANCELLED (499). The mapping of gRPC codes to HTTP statuses:\n\n"
        + CODE_TABLE,
        "content": error_content,
    }
    return {
        "schemas": dict(sorted(schemas.schemas.items())),
        "responses": responses,
        "parameters": {
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Idempotency key of the call, passed on as the `idempotency-key` metadata: it stands for an "
                    "empty `requestId` (for a client stream: the first message's), with the same rules (scoped to "
                    "the token's subject, kept at least 24 hours, at most 128 characters; a UUID is recommended). "
                    "Given both, they must be equal, else INVALID_ARGUMENT."
                ),
                "schema": {"type": "string", "maxLength": 128},
            }
        },
        "securitySchemes": {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    "A JWT in `Authorization: Bearer <token>`, signed with ES256 or RS256 by the configured issuer "
                    "(key id `kid` required), with the configured issuer (`iss`) and audience (`aud`; "
                    '"storeplane" by default) and a valid `exp`. Claims: `sub` (the caller, which also scopes '
                    "idempotency keys), `scope` (space-separated OAuth2 scopes; each operation lists those it "
                    'requires, all of them) and `stores` (the store ids the caller may act for, "*" for all; '
                    "store-scoped operations check the request's store against it)."
                ),
            }
        },
    }


def _version(index: _Index) -> str:
    versions = sorted({name.split(".")[2] for name in SERVICES if name in index.services})
    return ", ".join(versions) or "v1"


def build_document(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP bindings of the four services' RPCs in `descriptor_set`."""
    index = _index(descriptor_set)
    schemas = _Schemas(index)
    bindings: list[tuple[str, str, dict[str, Any]]] = []
    seen: dict[tuple[str, str], str] = {}
    tags = []
    problems = []
    for service_name in SERVICES:
        if service_name not in index.services:
            raise ValueError(f"{service_name} is not in the descriptor set")
        service, file, k = index.services[service_name]
        short = service_name.rsplit(".", 1)[-1]
        service_comment = index.comment(file, (FILE_SERVICE, k))
        tags.append({"name": short, "description": service_comment or service_name})
        for m, method in enumerate(service.method):
            rules = http_rules(method)
            if not rules:
                problems.append(f"{service_name}.{method.name} has no google.api.http binding")
                continue
            for binding, rule in enumerate(rules):
                try:
                    verb, path, operation = _operation(
                        schemas, service_name, file, (FILE_SERVICE, k, SERVICE_METHOD, m), method, rule, binding
                    )
                except ValueError as exc:
                    problems.append(str(exc))
                    continue
                key = (verb, _normalized(path))
                if key in seen:
                    problems.append(
                        f"{service_name}.{method.name}: {verb.upper()} {path} collides with {seen[key]} (same "
                        "method and path template up to variable names)"
                    )
                    continue
                seen[key] = f"{operation['x-grpc-method']} ({verb.upper()} {path})"
                bindings.append((path, verb, operation))
    if problems:
        raise ValueError("the HTTP annotations cannot be documented:\n  " + "\n  ".join(problems))
    paths = _merge_paths(bindings)
    schemas.resolve()
    components = _components(schemas)
    common = index.messages.get("pos.common.v1.Money")
    conventions = ""
    if common is not None:
        for location in common.file.source_code_info.location:
            if tuple(location.path) == (FILE_SYNTAX,):  # the file's comment precedes its syntax statement
                comments = [location.leading_comments, *location.leading_detached_comments]
                conventions = "\n\n".join(_clean_comment(c) for c in comments if c.strip())
    # Its "HTTP/JSON." paragraph is what this document says in full (and its word on server streams is not what the
    # edge does: one JSON message per line, not one JSON array).
    conventions = "\n\n".join(p for p in conventions.split("\n\n") if not p.startswith("HTTP/JSON."))
    description = (
        "The storeplane platform (checkout, stock, customer, loyalty) over HTTP/JSON: the edge transcodes each "
        "operation to the gRPC method named in its `x-grpc-method`. Bodies follow the proto3 JSON mapping: "
        "lowerCamelCase field names (requests may also use the proto field names), 64-bit integers as strings, enums "
        'by name, timestamps as RFC 3339 strings. Responses print fields at their default values too (0, "", '
        "false, []); unset message fields, proto3 optional fields and oneof members not chosen are left out. "
        "Unknown body fields and unknown query parameters are refused.\n\n"
        "Server-streaming operations answer `application/x-ndjson` (one JSON message per line); client-streaming "
        "operations take a JSON array of messages.\n\nErrors are google.rpc.Status bodies; HTTP statuses by gRPC "
        "code:\n\n" + CODE_TABLE
    )
    if conventions:
        description += "\n\n## Conventions\n\n" + conventions
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "storeplane", "version": _version(index), "description": description},
        "servers": [{"url": SERVER_URL, "description": "The edge of a local stack (`make run`)."}],
        "security": [{SECURITY_SCHEME: []}],
        "tags": tags,
        "paths": paths,
        "components": components,
    }
    return document


def render(document: dict[str, Any]) -> str:
    """Stable JSON: indent 2, key order as built (sorted where order does not matter), a trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Descriptor sets


def default_descriptor_set_path() -> Path | None:
    spec = importlib.util.find_spec("pos")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DESCRIPTOR_SET_NAME
        if candidate.is_file():
            return candidate
    return None


def repository_protos() -> Path | None:
    """The repository's protos/ when this module runs from a checkout."""
    candidate = Path(__file__).resolve().parents[4] / "protos"
    return candidate if candidate.is_dir() else None


def compile_descriptor_set(proto_root: Path) -> descriptor_pb2.FileDescriptorSet:
    """All .proto files under `proto_root` compiled with their imports and source info (grpc_tools.protoc)."""
    from grpc_tools import protoc

    files = sorted(str(p) for p in proto_root.rglob("*.proto"))
    includes = [str(proto_root), str(importlib.resources.files("grpc_tools") / "_proto")]
    google_api = importlib.util.find_spec("google.api")
    if google_api is not None and google_api.submodule_search_locations:
        # googleapis-common-protos ships google/api/*.proto and google/rpc/*.proto beside its modules.
        includes.append(str(Path(next(iter(google_api.submodule_search_locations))).parent.parent))
    with tempfile.TemporaryDirectory(prefix="openapi_") as tmp:
        out = Path(tmp) / DESCRIPTOR_SET_NAME
        args = [
            "grpc_tools.protoc",
            *(f"-I{include}" for include in includes),
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
            "google/rpc/code.proto",
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed (exit {code})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def load_descriptor_set(path: Path | None = None) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set at `path`, else the contracts' one, else compiled from the repository's protos/."""
    path = path or default_descriptor_set_path()
    if path is not None:
        return descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    protos = repository_protos()
    if protos is None:
        raise FileNotFoundError(
            f"no {DESCRIPTOR_SET_NAME} in the pos package and no protos/ to compile; run `make proto`"
        )
    return compile_descriptor_set(protos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="docs/openapi.json", help='where to write the document ("-": stdout)')
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    parser.add_argument("--descriptor-set", type=Path, help=f"a FileDescriptorSet (default: pos/{DESCRIPTOR_SET_NAME})")
    args = parser.parse_args(argv)
    try:
        text = render(build_document(load_descriptor_set(args.descriptor_set)))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"openapi: {exc}", file=sys.stderr)
        return 1
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if args.check:
        if out.is_file() and out.read_text() == text:
            return 0
        print(f"openapi: {out} is stale; run `make openapi`", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"openapi: {sum(len(ops) for ops in json.loads(text)['paths'].values())} operations -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
