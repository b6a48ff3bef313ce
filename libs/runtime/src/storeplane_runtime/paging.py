"""AIP-158 paging, as `common.proto` states it: page sizes and opaque page tokens that cannot be forged.

A token carries the keyset cursor of the next page (the sort key of the last row sent) and a fingerprint of the
request's other fields, signed with HMAC-SHA256. A token altered by hand, or presented with different request
fields (another customer's ledger, another store's sales), is INVALID_ARGUMENT on `page_token`; the list query
still filters by the request's own fields, so a cursor can only ever move within the listing it came from.

    pages = PageTokens(settings.page_token_key, NAME)
    page = pages.read(request)                       # page.size, page.cursor (None on the first page)
    rows = storage.entries(conn, request.customer_id, after=page.cursor, limit=page.size + 1)
    more = len(rows) > page.size
    token = pages.next_token(request, cursor_of(rows[page.size - 1])) if more else ""
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from storeplane_runtime.errors import Violations

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Cursor", "Page", "PageTokens"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TOKEN_LENGTH = 2048

Cursor = tuple[str | int, ...]


@dataclass(frozen=True)
class Page:
    """What one list call asks for: how many rows, and after which sort key (None: from the start)."""

    size: int
    cursor: Cursor | None


class PageTokens:
    """Reads `page_size`/`page_token` of a list request and writes its `next_page_token`.

    `key` signs the tokens; every replica of a service must share it (setting PAGE_TOKEN_KEY). Empty: a key
    derived from `service` (development only: anyone who reads this code can sign tokens, though still only for
    listings their own request names).
    """

    def __init__(self, key: str, service: str, *, size_field: str = "page_size", token_field: str = "page_token"):  # noqa: S107 (a field name)
        secret = key or f"storeplane-development-page-tokens/{service}"
        self._key = hashlib.sha256(secret.encode()).digest()
        self._size_field = size_field
        self._token_field = token_field

    def read(self, request: Message) -> Page:
        """The page a request asks for; INVALID_ARGUMENT naming `page_size` or `page_token` when either is bad."""
        violations = Violations()
        size = int(getattr(request, self._size_field))
        if size < 0:
            violations.add(self._size_field, "must not be negative")
        token = str(getattr(request, self._token_field))
        cursor: Cursor | None = None
        if token:
            cursor = self._cursor_of(token, request)
            if cursor is None:
                violations.add(
                    self._token_field,
                    "is not a next_page_token of this listing (tokens are opaque, and the other fields of the "
                    "request must stay the same across its pages)",
                )
        violations.raise_if_any()
        if size == 0:
            size = DEFAULT_PAGE_SIZE
        return Page(min(size, MAX_PAGE_SIZE), cursor)

    def next_token(self, request: Message, cursor: Sequence[str | int]) -> str:
        """The token of the page after the row whose sort key is `cursor`, for this request's listing."""
        body = json.dumps([list(cursor), self._fingerprint(request)], separators=(",", ":")).encode()
        signature = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        return _b64(body) + "." + _b64(signature)

    def _cursor_of(self, token: str, request: Message) -> Cursor | None:
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            return None
        body_text, signature_text = token.split(".")
        try:
            body = _unb64(body_text)
            signature = _unb64(signature_text)
        except ValueError:
            return None
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            cursor, fingerprint = json.loads(body)
        except ValueError:
            return None
        if fingerprint != self._fingerprint(request) or not isinstance(cursor, list):
            return None
        if not all(isinstance(part, str | int) and not isinstance(part, bool) for part in cursor):
            return None
        return tuple(cursor)

    def _fingerprint(self, request: Message) -> str:
        fields = type(request)()
        fields.CopyFrom(request)
        fields.ClearField(self._size_field)
        fields.ClearField(self._token_field)
        return hashlib.sha256(fields.SerializeToString(deterministic=True)).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
