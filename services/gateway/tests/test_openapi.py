"""The OpenAPI document (gateway.openapi): docs/openapi.json is what the generator makes from the current descriptors,
it is valid OpenAPI 3.1, it covers every RPC of the four services with the scopes of their auth option, and Redocly's
recommended lint passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from gateway import openapi
from pos.common.v1 import options_pb2

ROOT = Path(__file__).resolve().parents[3]
DOCUMENT = ROOT / "docs" / "openapi.json"
REDOCLY = "@redocly/cli@2.77.0"
VERBS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The contracts' descriptor set (`make proto`), else the protos compiled here with the same options."""
    if openapi.default_descriptor_set_path() is not None:
        return openapi.load_descriptor_set()
    return openapi.compile_descriptor_set(ROOT / "protos")


@pytest.fixture(scope="module")
def document(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    return openapi.build_document(descriptor_set)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, verb, op) for path, item in document["paths"].items() for verb, op in item.items() if verb in VERBS]


def methods(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.MethodDescriptorProto]:
    found = {}
    for file in descriptor_set.file:
        for service in file.service:
            full = f"{file.package}.{service.name}"
            if full in openapi.SERVICES:
                for method in service.method:
                    found[f"{full}/{method.name}"] = method
    return found


def message(descriptor_set: descriptor_pb2.FileDescriptorSet, full_name: str) -> descriptor_pb2.DescriptorProto:
    for file in descriptor_set.file:
        for candidate in file.message_type:
            if f"{file.package}.{candidate.name}" == full_name.lstrip("."):
                return candidate
    raise KeyError(full_name)


def test_checked_in_document_is_current(document: dict[str, Any]) -> None:
    expected = openapi.render(document)
    assert DOCUMENT.is_file(), "docs/openapi.json is missing: run `make openapi`"
    assert DOCUMENT.read_text() == expected, "docs/openapi.json is stale (the protos changed): run `make openapi`"


def test_rendering_is_deterministic(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    first = openapi.render(openapi.build_document(descriptor_set))
    shuffled = descriptor_pb2.FileDescriptorSet()
    shuffled.file.extend(reversed(descriptor_set.file))
    assert openapi.render(openapi.build_document(shuffled)) == first
    assert first.endswith("}\n")


def test_check_flag_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "openapi.json"
    assert openapi.main(["--out", str(out)]) == 0
    assert openapi.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace('"3.1.0"', '"3.0.0"'))
    assert openapi.main(["--check", "--out", str(out)]) == 1
    assert "make openapi" in capsys.readouterr().err


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    validate(json.loads(DOCUMENT.read_text()), cls=OpenAPIV31SpecValidator)


def test_every_rpc_has_an_operation_and_every_operation_an_rpc(
    document: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet
) -> None:
    rpcs = methods(descriptor_set)
    assert len(rpcs) >= 30
    by_rpc: dict[str, list[str]] = {}
    operation_ids = []
    for _, _, op in operations(document):
        assert op["x-grpc-method"] in rpcs, f"{op['operationId']} maps to no RPC of the four services"
        service, method = op["x-grpc-method"].split("/")
        assert re.fullmatch(rf"{service.rsplit('.', 1)[-1]}_{method}(_\d+)?", op["operationId"])
        assert op["tags"] == [service.rsplit(".", 1)[-1]]
        assert op["summary"]
        by_rpc.setdefault(op["x-grpc-method"], []).append(op["operationId"])
        operation_ids.append(op["operationId"])
    assert sorted(by_rpc) == sorted(rpcs), f"RPCs without an operation: {sorted(set(rpcs) - set(by_rpc))}"
    assert len(operation_ids) == len(set(operation_ids))
    for rpc, ids in by_rpc.items():
        service, method = rpc.split("/")
        assert f"{service.rsplit('.', 1)[-1]}_{method}" in ids
    assert {tag["name"] for tag in document["tags"]} == {s.rsplit(".", 1)[-1] for s in openapi.SERVICES}


def test_security_follows_the_auth_option(
    document: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet
) -> None:
    scheme = document["components"]["securitySchemes"][openapi.SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for word in ("ES256", "RS256", "issuer", "audience", "scope", "stores"):
        assert word in scheme["description"]
    rpcs = methods(descriptor_set)
    for _, _, op in operations(document):
        options = descriptor_pb2.MethodOptions.FromString(rpcs[op["x-grpc-method"]].options.SerializeToString())
        assert options.HasExtension(options_pb2.auth), op["x-grpc-method"]
        scopes = sorted(options.Extensions[options_pb2.auth].scopes)
        assert scopes, op["x-grpc-method"]
        assert op["security"] == [{openapi.SECURITY_SCHEME: scopes}]
        assert op["x-required-scopes"] == scopes
        for scope in scopes:
            assert f"`{scope}`" in op["description"]


def test_streaming_rpcs(document: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    rpcs = methods(descriptor_set)
    for _, _, op in operations(document):
        method = rpcs[op["x-grpc-method"]]
        ok = op["responses"]["200"]["content"]
        response_ref = {"$ref": openapi.REF + method.output_type.lstrip(".")}
        if method.server_streaming:
            assert list(ok) == ["application/x-ndjson"]
            assert ok["application/x-ndjson"]["schema"] == response_ref
            assert "no wrapper" in op["responses"]["200"]["description"]
        else:
            assert ok == {"application/json": {"schema": response_ref}}
        if method.client_streaming:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema["type"] == "array"
            assert "JSON array" in op["requestBody"]["description"]
    streaming = {rpc for rpc, m in rpcs.items() if m.server_streaming or m.client_streaming}
    assert {rpc.split("/")[1] for rpc in streaming} >= {
        "WatchStock",
        "ExportCustomers",
        "ImportItems",
        "ImportStockLevels",
        "UploadOfflineSales",
    }


def test_parameters_and_bodies(document: dict[str, Any], descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    rpcs = methods(descriptor_set)
    for path, verb, op in operations(document):
        method = rpcs[op["x-grpc-method"]]
        request = message(descriptor_set, method.input_type)
        params = [p for p in op.get("parameters", []) if "$ref" not in p]
        in_path = [p["name"] for p in params if p["in"] == "path"]
        assert in_path == re.findall(r"\{([^}]*)\}", path), (verb, path)
        has_key = {"$ref": "#/components/parameters/IdempotencyKey"} in op.get("parameters", [])
        assert has_key == any(f.name == "request_id" for f in request.field), op["operationId"]
        if verb == "get":
            assert "requestBody" not in op
        elif verb in ("post", "put", "patch"):  # the bindings all take body "*": no query parameters then
            assert not [p for p in params if p["in"] == "query"], op["operationId"]
            assert op["requestBody"]["required"] is True
        for status in ("400", "401", "403", "404", "409", "429", "500", "503", "504"):
            assert status in op["responses"], (op["operationId"], status)
    key = document["components"]["parameters"]["IdempotencyKey"]
    assert (key["name"], key["in"], key["required"]) == ("Idempotency-Key", "header", False)
    # GetAvailability: a repeated query parameter; GetItem: the sibling of the path's oneof member is no parameter.
    ops = {op["operationId"]: op for _, _, op in operations(document)}
    skus = next(p for p in ops["StockService_GetAvailability"]["parameters"] if p["name"] == "skus")
    assert (skus["in"], skus["schema"]["type"], skus["explode"]) == ("query", "array", True)
    assert [p["name"] for p in ops["StockService_GetItem"]["parameters"]] == ["store_id", "sku"]
    assert [p["name"] for p in ops["StockService_GetItem_1"]["parameters"]] == ["store_id", "barcode"]


def test_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    level = schemas["pos.stock.v1.StockLevel"]
    assert level["additionalProperties"] is False
    assert "required" not in level
    assert set(level["properties"]) == {"storeId", "sku", "onHand", "reserved", "available", "updatedAt"}
    assert level["properties"]["onHand"]["type"] == "string"
    assert level["properties"]["onHand"]["format"] == "int64"
    assert level["properties"]["updatedAt"]["type"] == "string"
    assert level["properties"]["updatedAt"]["format"] == "date-time"
    reason = schemas["pos.stock.v1.StockChangeReason"]
    assert reason["type"] == "string"
    assert "STOCK_CHANGE_REASON_SALE" in reason["enum"]
    ops = {op["operationId"]: op for _, _, op in operations(document)}
    reserve = ops["StockService_Reserve"]["requestBody"]["content"]["application/json"]["schema"]
    assert "reservationId" not in reserve["properties"]  # bound by the path
    assert reserve["additionalProperties"] is False
    assert reserve["properties"]["ttl"]["pattern"].endswith("s$")
    item = schemas["pos.stock.v1.Item"]
    assert item["properties"]["barcodes"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": item["properties"]["barcodes"]["description"],
    }
    assert item["properties"]["revision"]["readOnly"] is True
    find = schemas["pos.customer.v1.FindCustomerRequest"]
    members = find["x-oneofs"]["lookup"]
    assert len(members) >= 2
    assert find["dependentSchemas"][members[0]] == {"properties": dict.fromkeys(members[1:], False)}
    assert set(find["dependentSchemas"]) == set(members[:-1])
    for name, schema in schemas.items():
        if name.startswith("pos.") and schema.get("type") == "object":
            assert schema["additionalProperties"] is False, name
            assert "required" not in schema, name
    status = schemas["google.rpc.Status"]
    assert status["properties"]["code"]["type"] == "integer"
    details = status["properties"]["details"]["items"]
    assert {d["$ref"].rsplit("/", 1)[-1] for d in details["oneOf"]} == set(openapi.ERROR_DETAILS)
    assert schemas["google.rpc.ErrorInfo"]["properties"]["@type"]["const"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert schemas["google.rpc.ErrorInfo"]["properties"]["metadata"]["additionalProperties"] == {"type": "string"}
    assert "Retry-After" in document["components"]["responses"]["TooManyRequests"]["headers"]


def test_path_templates() -> None:
    assert openapi.parse_template("/v1/stores/{store_id}/items/{sku}")[0] == "/v1/stores/{store_id}/items/{sku}"
    path, variables = openapi.parse_template("/v1/{name=shelves/*/books/**}:get")
    assert path == "/v1/{name}:get"
    assert [(v.field_path, v.pattern) for v in variables] == [("name", "shelves/*/books/**")]
    assert openapi._segments_pattern("shelves/*/books/**") == "^shelves/[^/]+/books/.*$"
    assert openapi.parse_template("/v1/customers/{customer.customer_id}")[1][0].field_path == "customer.customer_id"
    with pytest.raises(ValueError, match="wildcards"):
        openapi.parse_template("/v1/*/items")
    with pytest.raises(ValueError, match="field path"):
        openapi.parse_template("/v1/{1abc}")


def test_redocly_lint() -> None:
    npx = shutil.which("npx")
    if npx is None:
        if os.environ.get("CI"):
            pytest.fail("npx (Node.js) is needed for the Redocly lint of docs/openapi.json")
        pytest.skip("npx (Node.js) is not installed")
    try:
        result = subprocess.run(
            [npx, "--yes", REDOCLY, "lint", "--format", "stylish", str(DOCUMENT.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the Redocly lint did not finish within 10 minutes")
    assert result.returncode == 0, f"redocly lint failed:\n{result.stdout}\n{result.stderr}"
