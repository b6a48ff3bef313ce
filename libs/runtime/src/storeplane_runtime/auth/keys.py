"""The issuer's public keys, from a JWKS file (re-read when it changes) or URL (cached, refreshed on an unknown key
id at most once per interval), so a key rotation needs no restart."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

__all__ = ["KeySet", "KeySetError"]

log = logging.getLogger(__name__)

# Key types each accepted algorithm must be signed with: a token's `alg` never chooses how its key is used.
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
FILE_CHECK_SECONDS = 1.0  # how stale a file's keys may be on the path of a token already known


class KeySetError(Exception):
    """The key set could not be read (a bad file or URL stops the process at start)."""


class KeySet:
    """Public signing keys by key id. `generation` changes whenever the keys do (verified tokens are re-checked)."""

    def __init__(
        self,
        *,
        file: str = "",
        url: str = "",
        refresh_seconds: float = 60.0,
        max_age_seconds: float = 300.0,
        fetch_timeout: float = 5.0,
    ) -> None:
        if bool(file) == bool(url):
            raise KeySetError("give exactly one of AUTH_JWKS_FILE and AUTH_JWKS_URL")
        self.file, self.url = file, url
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.fetch_timeout = fetch_timeout
        self.generation = 0
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._file_stamp: tuple[float, int, int] | None = None
        self._checked = 0.0  # monotonic time of the last look at the source
        self._loaded = 0.0
        self.reload(force=True)

    def key_for(self, kid: str) -> Any | None:
        """The PyJWK of `kid`, looking at the source again when `kid` is unknown (rate-limited for URLs)."""
        self.refresh_if_due()
        key = self._keys.get(kid)
        if key is None and self._may_look_again():
            self.reload()
            key = self._keys.get(kid)
        return key

    def refresh_if_due(self) -> None:
        """Cheap on the hot path: a file is looked at once a second, a URL once `max_age_seconds`."""
        now = time.monotonic()
        due = FILE_CHECK_SECONDS if self.file else self.max_age_seconds
        if now - self._checked >= due:
            try:
                self.reload()
            except KeySetError:
                log.warning("keys could not be refreshed; keeping the ones loaded", exc_info=True)

    def _may_look_again(self) -> bool:
        # An unknown kid may be a new key: a file costs a stat, a URL at most one fetch per refresh interval (a flood of
        # tokens with made-up kids must not become a flood of requests to the issuer).
        return bool(self.file) or time.monotonic() - self._loaded >= self.refresh_seconds

    def reload(self, *, force: bool = False) -> None:
        with self._lock:
            self._checked = time.monotonic()
            if self.file:
                try:
                    st = os.stat(self.file)
                except OSError as exc:
                    raise KeySetError(f"cannot read AUTH_JWKS_FILE {self.file}: {exc.strerror}") from None
                stamp = (st.st_mtime, st.st_size, st.st_ino)
                if not force and stamp == self._file_stamp:
                    return
                try:
                    with open(self.file, encoding="utf-8") as f:
                        document = json.load(f)
                except (OSError, ValueError) as exc:
                    raise KeySetError(f"cannot read AUTH_JWKS_FILE {self.file}: {exc}") from None
                self._file_stamp = stamp
            else:
                document = self._fetch()
            keys = parse_jwks(document)
            self._loaded = time.monotonic()
            if keys.keys() != self._keys.keys() or any(keys[k].key != self._keys[k].key for k in keys):
                self._keys = keys
                self.generation += 1
                log.info("signing keys loaded", extra={"key_ids": sorted(keys), "generation": self.generation})

    def _fetch(self) -> Any:
        if not self.url.startswith(("https://", "http://")):
            raise KeySetError(f"AUTH_JWKS_URL must be an http(s) URL, not {self.url!r}")
        try:
            with urllib.request.urlopen(self.url, timeout=self.fetch_timeout) as response:  # noqa: S310 (scheme checked)
                return json.loads(response.read(1_000_000))
        except (OSError, ValueError) as exc:
            raise KeySetError(f"cannot fetch AUTH_JWKS_URL {self.url}: {exc}") from None


def parse_jwks(document: Any) -> dict[str, Any]:
    """Signing keys with a kid of the types we accept; others (encryption keys, symmetric keys) are left out."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeySetError("a JWKS document is an object with a list of keys")
    keys = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping) or not entry.get("kid") or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in KEY_TYPES.values():
            continue  # "oct" above all: a symmetric key would let anyone who reads the JWKS sign
        try:
            keys[str(entry["kid"])] = jwt.PyJWK.from_dict(dict(entry))
        except jwt.PyJWTError as exc:
            log.warning("unusable key left out", extra={"kid": entry.get("kid"), "error": str(exc)})
    return keys
