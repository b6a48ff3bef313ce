"""Streams over REST/JSON through the edge: a client stream as newline-delimited JSON or as a JSON array of its
messages, a server stream as newline-delimited JSON, each message as the gRPC answer renders in proto3 JSON."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.testing import TestAuthority

from .conftest import Stack

STORE = "berlin-mitte"


def _item(sku: str, request_id: str) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "item": {
            "sku": sku,
            "name": f"REST shoe {sku}",
            "taxClass": "standard",
            "prices": [{"amountMinor": "4999", "currencyCode": "EUR"}],
        },
    }


def _post(stack: Stack, path: str, body: bytes, token: str, content_type: str) -> tuple[int, Any]:
    host, port = stack.address("gateway").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST", path, body=body, headers={"authorization": f"Bearer {token}", "content-type": content_type}
        )
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        connection.close()


def _get_item(stack: Stack, sku: str, token: str) -> stock_pb2.GetItemResponse:
    with with_bearer(grpc.insecure_channel(stack.address("gateway")), token) as channel:
        return stock_pb2_grpc.StockServiceStub(channel).GetItem(
            stock_pb2.GetItemRequest(store_id=STORE, sku=sku), timeout=5
        )


def test_a_client_stream_takes_newline_delimited_json_one_message_per_line(
    stack: Stack, authority: TestAuthority
) -> None:
    token = authority.token()
    rid, skus = str(uuid.uuid4()), [f"NDJ-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    body = "\n".join(json.dumps(_item(sku, rid)) for sku in skus).encode() + b"\n\n"
    status, answer = _post(stack, "/v1/items:import", body, token, "application/x-ndjson")
    assert status == 200, answer
    assert answer["summary"]["received"] == "3" and answer["summary"]["created"] == "3", answer
    assert [_get_item(stack, sku, token).item.name for sku in skus] == [f"REST shoe {sku}" for sku in skus]


def test_a_client_stream_takes_a_json_array_of_its_messages(stack: Stack, authority: TestAuthority) -> None:
    token = authority.token()
    rid, skus = str(uuid.uuid4()), [f"ARR-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    status, answer = _post(
        stack, "/v1/items:import", json.dumps([_item(sku, rid) for sku in skus]).encode(), token, "application/json"
    )
    assert status == 200, answer
    assert answer["summary"]["created"] == "2", answer


def test_a_bad_line_in_a_newline_delimited_upload_refuses_it_whole(stack: Stack, authority: TestAuthority) -> None:
    token = authority.token()
    rid, sku = str(uuid.uuid4()), f"BAD-{uuid.uuid4().hex[:8]}"
    body = (json.dumps(_item(sku, rid)) + "\n{not json\n").encode()
    status, answer = _post(stack, "/v1/items:import", body, token, "application/x-ndjson")
    assert status == 400
    # Envoy's own refusal reads like a service's: a google.rpc.Status with the matching code and a reason.
    assert answer["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0], answer
    assert answer["details"][0]["reason"] == "MALFORMED_REQUEST", answer
    with pytest.raises(grpc.RpcError) as refused:
        _get_item(stack, sku, token)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # nothing of the refused upload was written


def test_a_server_stream_answers_newline_delimited_json_as_changes_happen(
    stack: Stack, authority: TestAuthority
) -> None:
    token = authority.token()
    sku = f"WCH-{uuid.uuid4().hex[:8]}"
    status, _ = _post(
        stack, "/v1/items:import", json.dumps([_item(sku, str(uuid.uuid4()))]).encode(), token, "application/json"
    )
    assert status == 200
    host, port = stack.address("gateway").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(
        "GET", f"/v1/stores/{STORE}/stock-levels:watch?skus={sku}", headers={"authorization": f"Bearer {token}"}
    )
    answer = connection.getresponse()
    assert answer.status == 200
    assert answer.getheader("content-type", "").startswith("application/x-ndjson")
    lines: list[dict[str, Any]] = []
    arrived = threading.Event()

    def read() -> None:
        for line in answer:
            if line.strip():
                lines.append(json.loads(line))
                if any(m.get("change", {}).get("onHandDelta") == "7" for m in lines):
                    arrived.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with with_bearer(grpc.insecure_channel(stack.address("gateway")), token) as channel:
        stock_pb2_grpc.StockServiceStub(channel).AdjustStock(
            stock_pb2.AdjustStockRequest(
                store_id=STORE,
                sku=sku,
                delta=7,
                reason=stock_pb2.ADJUSTMENT_REASON_RECEIPT,
                request_id=str(uuid.uuid4()),
            ),
            timeout=5,
        )
    assert arrived.wait(10), f"no change of {sku} reached the REST watcher: {lines}"
    connection.close()
    change = next(m for m in lines if m.get("change", {}).get("onHandDelta") == "7")
    # Each line is one WatchStockResponse in proto3 JSON, as the gRPC answer renders.
    parsed = json_format.ParseDict(change, stock_pb2.WatchStockResponse())
    assert (parsed.change.sku, parsed.change.store_id, parsed.change.on_hand_delta) == (sku, STORE, 7)
