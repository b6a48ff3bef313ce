"""A browser calls the edge from a web page of another origin: headless Chromium (Debian's, driven by playwright-core
from tests/e2e/browser/drive.mjs) loads a page served by this test, whose script calls GetItem over gRPC-Web (frames
built and parsed by hand) and over REST/JSON (a CORS preflight first, for the Authorization header). From the one
allowed origin both answer; from any other origin, and from any origin when CORS_ALLOWED_ORIGINS is not set, the
browser refuses the answers (fetch rejects with a TypeError).

Needs /usr/bin/chromium, node and tests/e2e/browser/node_modules (`.ci/run` installs them); in CI (CI=true) a missing
one fails the test, elsewhere it skips."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.app import ServiceApp
from storeplane_runtime.auth.client import with_bearer
from storeplane_runtime.testing import service_settings, test_authority, wait_serving

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SERVICES = ("checkout", "stock", "customer", "loyalty")
STORE = "berlin-mitte"
SKU = f"WEB-{uuid.uuid4().hex[:8].upper()}"
DRIVE_TIMEOUT_SECONDS = 60

# The page's script: one GetItem over gRPC-Web (a 5-byte frame header, then GetItemRequest encoded by hand), the same
# over REST/JSON, and the same two for a SKU nobody has (an error's status and details must be readable too). Each
# result goes into <pre id="results">, data-done="1" when all are in.
SCRIPT = r"""
const config = JSON.parse(document.getElementById('config').textContent);
const READ = ['content-type', 'grpc-status', 'grpc-message', 'grpc-status-details-bin', 'retry-after',
              'x-ratelimit-limit', 'x-ratelimit-remaining'];

function varint(n) {
  const out = [];
  while (n > 0x7f) { out.push((n & 0x7f) | 0x80); n >>>= 7; }
  out.push(n);
  return out;
}
function stringField(tag, text) {
  const bytes = new TextEncoder().encode(text);
  return [tag, ...varint(bytes.length), ...bytes];
}
function frame(message) {  // flag 0x00 (data, uncompressed), big-endian length, the message
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}
function parseFrames(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const frames = [];
  let at = 0;
  while (at + 5 <= bytes.length) {
    const length = view.getUint32(at + 1);
    frames.push({ flag: bytes[at], payload: bytes.slice(at + 5, at + 5 + length) });
    at += 5 + length;
  }
  return { frames, leftover: bytes.length - at };
}
function base64(bytes) { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }
function latin1(bytes) { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return s; }
function readable(headers) {
  const out = {};
  for (const name of READ) out[name] = headers.get(name);
  return out;
}
function failure(error) { return { ok: false, error: `${error.name}: ${error.message}` }; }

async function grpcWeb(sku, token) {
  const request = Uint8Array.from([...stringField(0x0a, config.store), ...stringField(0x12, sku)]);
  const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1',
                    'x-user-agent': 'grpc-web-javascript/0.1' };
  if (token) headers.authorization = `Bearer ${token}`;
  try {
    const response = await fetch(`${config.edge}/pos.stock.v1.StockService/GetItem`,
                                 { method: 'POST', headers, body: frame(request) });
    const { frames, leftover } = parseFrames(await response.arrayBuffer());
    const data = frames.filter((f) => !(f.flag & 0x80));
    const trailer = frames.find((f) => f.flag & 0x80);
    const trailers = {};
    if (trailer) {
      for (const line of new TextDecoder().decode(trailer.payload).split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon > 0) trailers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
    }
    return {
      ok: true, httpStatus: response.status, headers: readable(response.headers), leftover, trailers,
      frames: frames.map((f) => ({ flag: f.flag, length: f.payload.length })),
      // A trailers-only answer (an error) carries the status in the HTTP headers instead of a trailer frame.
      grpcStatus: trailers['grpc-status'] ?? response.headers.get('grpc-status'),
      data: data.map((f) => base64(f.payload)),
      skuInBytes: data.some((f) => latin1(f.payload).includes(sku)),
    };
  } catch (error) { return failure(error); }
}

async function rest(sku) {
  try {
    const response = await fetch(`${config.edge}/v1/stores/${config.store}/items/${encodeURIComponent(sku)}`,
                                 { headers: { authorization: `Bearer ${config.token}` } });
    const body = await response.text();
    let json = null;
    try { json = JSON.parse(body); } catch (_) {}
    return { ok: true, status: response.status, headers: readable(response.headers), body, json };
  } catch (error) { return failure(error); }
}

(async () => {
  const results = {};
  results.origin = location.origin;
  results.grpcWeb = await grpcWeb(config.sku, config.token);
  results.rest = await rest(config.sku);
  results.grpcWebMissing = await grpcWeb(config.missingSku, config.token);
  results.restMissing = await rest(config.missingSku);
  results.grpcWebNoToken = await grpcWeb(config.sku, '');
  const out = document.getElementById('results');
  out.textContent = JSON.stringify(results);
  out.dataset.done = '1';
})();
"""


def _page(edge: str, token: str) -> str:
    config = {"edge": edge, "token": token, "store": STORE, "sku": SKU, "missingSku": "WEB-NOBODY-HAS-THIS"}
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>storeplane browser test</title></head><body>"
        f"<script type='application/json' id='config'>{html.escape(json.dumps(config), quote=False)}</script>"
        "<pre id='results'></pre>"
        f"<script>{SCRIPT}</script></body></html>"
    )


def _require(condition: bool, reason: str) -> None:
    """The browser's parts must be installed: fail in CI (.ci/run installs them), skip elsewhere."""
    if condition:
        return
    message = f"{reason} (.ci/run installs it: apt-get install chromium; npm ci --prefix tests/e2e/browser)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class PageServer:
    """A tiny HTTP server on a loopback port of its own (its own origin), serving the pages it is given."""

    def __init__(self) -> None:
        pages: dict[str, str] = {}
        self.pages = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                page = pages.get(self.path)
                body = (page or "not found").encode()
                self.send_response(200 if page is not None else 404)
                self.send_header("content-type", "text/html; charset=utf-8" if page else "text/plain")
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, page: str) -> str:
        self.pages[path] = page
        return self.origin + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Edges:
    allowing: str  # http://host:port of the edge that allows `allowed` (CORS_ALLOWED_ORIGINS)
    default: str  # the same services behind an edge with the default settings (no origin allowed)
    allowed: PageServer
    other: PageServer
    token: str


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edges]:
    """The four services (SQLite) and two edges in front of them: one allowing the `allowed` page server's origin,
    one with the default settings; one item imported through the first."""
    import importlib

    from gateway import main as gateway

    _require(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}")
    _require(shutil.which("node") is not None, "no node on PATH")
    _require((BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), f"no playwright-core in {BROWSER_DIR}")
    directory = tmp_path_factory.mktemp("browser")
    allowed, other = PageServer(), PageServer()
    apps: list[ServiceApp] = []
    try:
        addresses: dict[str, str] = {}
        for name in SERVICES:
            module = importlib.import_module(f"{name}.main")
            app = module.create_app(service_settings(module.Settings, name, f"sqlite:///{directory}/{name}.db"))
            apps.append(app)
            addresses[f"{name}_addr"] = f"127.0.0.1:{app.start()}"
        edge_addresses = []
        for cors in (allowed.origin, ""):
            app = gateway.create_app(
                service_settings(gateway.Settings, "gateway", "", cors_allowed_origins=cors, **addresses)
            )
            apps.append(app)
            edge_addresses.append(f"127.0.0.1:{app.start()}")
        for address in edge_addresses:
            wait_serving(address, "pos.stock.v1.StockService")
        token = test_authority().token()
        item = stock_pb2.Item(
            sku=SKU,
            name="Browser socks",
            tax_class="standard",
            prices=[common_pb2.Money(amount_minor=1299, currency_code="EUR")],
        )
        with with_bearer(grpc.insecure_channel(edge_addresses[0]), token) as channel:
            stock_pb2_grpc.StockServiceStub(channel).ImportItems(
                iter([stock_pb2.ImportItemsRequest(request_id=str(uuid.uuid4()), item=item)]), timeout=30
            )
        yield Edges(f"http://{edge_addresses[0]}", f"http://{edge_addresses[1]}", allowed, other, token)
    finally:
        for app in reversed(apps):
            app.stop(0)
        allowed.close()
        other.close()


def _browse(url: str) -> dict[str, Any]:
    """What the page at `url` wrote into its DOM, read by drive.mjs in headless Chromium."""
    try:
        done = subprocess.run(
            ["node", "drive.mjs", url, str((DRIVE_TIMEOUT_SECONDS - 10) * 1000)],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=DRIVE_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"drive.mjs did not finish within {DRIVE_TIMEOUT_SECONDS}s: {exc.stderr!r}") from exc
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"drive.mjs failed ({done.returncode}): {done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert not report["pageErrors"], report
    results: dict[str, Any] = report["results"]
    return results


REST_PATH = f"/v1/stores/{STORE}/items/{SKU}"
RPC_PATH = "/pos.stock.v1.StockService/GetItem"
RPC_HEADERS = "authorization,content-type,x-grpc-web,x-user-agent"


def _preflight(edge: str, origin: str, path: str, method: str, headers: str) -> dict[str, str]:
    """The edge's answer to the preflight a browser sends before a call of `method` with these request headers."""
    request = urllib.request.Request(
        edge + path,
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.headers
    except urllib.error.HTTPError as exc:
        answer = exc.headers
    return {k.lower(): v for k, v in answer.items()}


@pytest.fixture(scope="module")
def allowed_page(edges: Edges) -> dict[str, Any]:
    """What the page of the allowed origin read from the allowing edge (one browser run for the tests below)."""
    results = _browse(edges.allowed.serve("/allowed.html", _page(edges.allowing, edges.token)))
    assert results["origin"] == edges.allowed.origin
    return results


def test_a_page_of_the_allowed_origin_calls_the_edge_over_grpc_web(edges: Edges, allowed_page: dict[str, Any]) -> None:
    answer = _preflight(edges.allowing, edges.allowed.origin, RPC_PATH, "POST", RPC_HEADERS)
    assert answer.get("access-control-allow-origin") == edges.allowed.origin, answer
    assert set(RPC_HEADERS.split(",")) <= {h.strip() for h in answer["access-control-allow-headers"].split(",")}
    web = allowed_page["grpcWeb"]
    assert web["ok"], web
    assert web["httpStatus"] == 200, web
    assert web["grpcStatus"] == "0", web
    assert web["frames"][-1]["flag"] == 0x80 and web["leftover"] == 0, web  # data frame(s), then the trailer frame
    assert web["skuInBytes"], web
    [data] = web["data"]
    item = stock_pb2.GetItemResponse.FromString(base64.b64decode(data))
    assert item.item.sku == SKU
    assert item.price.amount_minor == 1299
    # An error reaches the page too (trailers-only: status and details in the exposed headers).
    missing = allowed_page["grpcWebMissing"]
    assert missing["ok"], missing
    assert missing["grpcStatus"] == str(grpc.StatusCode.NOT_FOUND.value[0]), missing
    assert missing["data"] == [], missing
    assert missing["headers"]["grpc-status-details-bin"], missing
    # A call without a token is refused by the edge itself (jwt_authn's local reply carries the CORS headers too).
    no_token = allowed_page["grpcWebNoToken"]
    assert no_token["ok"], no_token
    assert no_token["grpcStatus"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0]), no_token
    assert no_token["headers"]["grpc-status-details-bin"], no_token


def test_a_page_of_the_allowed_origin_calls_the_edge_over_rest(allowed_page: dict[str, Any]) -> None:
    rest = allowed_page["rest"]
    assert rest["ok"], rest
    assert rest["status"] == 200, rest
    assert rest["json"]["item"]["sku"] == SKU
    assert rest["json"]["price"]["amountMinor"] in ("1299", 1299)
    missing = allowed_page["restMissing"]
    assert missing["ok"], missing
    assert missing["status"] == 404, missing
    assert missing["json"]["code"] == grpc.StatusCode.NOT_FOUND.value[0], missing


def test_the_edge_answers_the_allowed_origins_preflight_of_a_rest_call(edges: Edges) -> None:
    answer = _preflight(edges.allowing, edges.allowed.origin, REST_PATH, "GET", "authorization")
    assert answer.get("access-control-allow-origin") == edges.allowed.origin, answer
    allowed = {h.strip() for h in answer.get("access-control-allow-headers", "").split(",")}
    assert "authorization" in allowed, answer


@pytest.mark.parametrize("case", ["other-origin", "nothing-allowed-by-default"])
def test_the_browser_refuses_the_edges_answers_to_a_page_of_an_origin_not_allowed(edges: Edges, case: str) -> None:
    edge = edges.allowing if case == "other-origin" else edges.default
    pages = edges.other if case == "other-origin" else edges.allowed  # by default, not even that origin
    results = _browse(pages.serve(f"/{case}.html", _page(edge, edges.token)))
    assert results["origin"] == pages.origin
    for call in ("rest", "grpcWeb", "restMissing", "grpcWebMissing", "grpcWebNoToken"):
        assert not results[call]["ok"], (call, results[call])
        assert results[call]["error"].startswith("TypeError"), (call, results[call])
    # The edge's own word: no Access-Control-Allow-Origin for that origin, on a REST call's preflight or an RPC's.
    for path, method, headers in ((REST_PATH, "GET", "authorization"), (RPC_PATH, "POST", RPC_HEADERS)):
        assert "access-control-allow-origin" not in _preflight(edge, pages.origin, path, method, headers)
