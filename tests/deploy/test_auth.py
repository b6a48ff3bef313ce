"""Tokens in the manifests: every process reads its issuer's public keys, no private key is ever rendered (prod nor
dev: the development issuer's key stays on the developer's machine), reflection is off in prod and open in dev."""

from __future__ import annotations

import base64
import contextlib
import json
import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    DEV_ISSUER,
    OVERLAYS,
    PROCESSES,
    ROOT,
    Manifests,
    main_container,
    missing,
    pod_spec,
)

from storeplane_runtime.auth.issuer import DevIssuer
from storeplane_runtime.auth.keys import KeySet

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# Members of a JWK that only a private (or symmetric) key has.
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _settings(m: Manifests, deployment: dict[str, Any]) -> dict[str, str]:
    container = main_container(deployment)
    settings = m.configmap_data(deployment, container)
    settings.update({e["name"]: e.get("value", "<from a reference>") for e in container.get("env", [])})
    return settings


def _decoded_values(doc: dict[str, Any]) -> list[str]:
    """Every value a ConfigMap or Secret holds, base64 undone: a key could hide there encoded."""
    values = [str(v) for v in (doc.get("data") or {}).values()] + [
        str(v) for v in (doc.get("stringData") or {}).values()
    ]
    encoded = (doc.get("binaryData") or {}).values() if doc["kind"] == "ConfigMap" else (doc.get("data") or {}).values()
    for value in encoded:
        with contextlib.suppress(ValueError):
            values.append(base64.b64decode(value).decode("utf-8", "replace"))
    return values


def _jwks_documents(m: Manifests) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in [*m.of_kind("ConfigMap"), *m.of_kind("Secret")]:
        for value in _decoded_values(doc):
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("keys"), list):
                found.append((doc["metadata"]["name"], parsed))
    return found


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_no_private_key_material_is_rendered(
    rendered_text: dict[str, str], manifests: dict[str, Manifests], overlay: str
) -> None:
    assert not PRIVATE_KEY.search(rendered_text[overlay]), f"{overlay}: a PEM private key in the manifests"
    m = manifests[overlay]
    for doc in [*m.of_kind("ConfigMap"), *m.of_kind("Secret")]:
        for value in _decoded_values(doc):
            assert not PRIVATE_KEY.search(value), f"{overlay}: {doc['kind']}/{doc['metadata']['name']} holds a key"
    for name, jwks in _jwks_documents(m):
        for key in jwks["keys"]:
            assert not PRIVATE_JWK_MEMBERS & set(key), f"{overlay}: {name} publishes a private or symmetric key"


def test_the_guard_finds_a_private_key(tmp_path: Path) -> None:
    """The checks above catch what the development issuer writes, in clear or base64-encoded in a Secret."""
    issuer = DevIssuer(tmp_path).ensure()
    pem = issuer.key_file.read_text()
    assert PRIVATE_KEY.search(pem)
    assert not PRIVATE_KEY.search(issuer.jwks_file.read_text())
    doc = {"kind": "Secret", "data": {"key.pem": base64.b64encode(pem.encode()).decode()}}
    assert any(PRIVATE_KEY.search(v) for v in _decoded_values(doc))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_reads_its_issuers_keys(manifests: dict[str, Manifests], overlay: str) -> None:
    m = manifests[overlay]
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    deployments = {d["metadata"]["name"]: d for d in m.of_kind("Deployment")}
    assert set(deployments) == set(PROCESSES)
    for name, deployment in deployments.items():
        settings = _settings(m, deployment)
        assert settings.get("AUTH_JWKS_FILE") or settings.get("AUTH_JWKS_URL"), f"{overlay}/{name}: no issuer keys"
        path = settings.get("AUTH_JWKS_FILE")
        if not path:
            assert settings["AUTH_JWKS_URL"].startswith("https://"), f"{overlay}/{name}: JWKS over plain HTTP"
            continue
        # The file is in a volume of a ConfigMap or Secret (a whole mount, so an update reaches the process).
        mounts = [
            mt for mt in main_container(deployment).get("volumeMounts", []) if path.startswith(mt["mountPath"] + "/")
        ]
        assert len(mounts) == 1, f"{overlay}/{name}: {path} is on no mounted volume"
        assert not mounts[0].get("subPath"), f"{overlay}/{name}: a subPath mount never sees an updated key set"
        assert mounts[0].get("readOnly") is True, f"{overlay}/{name}"
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        volume = volumes[mounts[0]["name"]]
        key = posixpath.relpath(path, mounts[0]["mountPath"])
        if "configMap" in volume:
            kind, source = "ConfigMap", volume["configMap"]["name"]
        else:
            assert "secret" in volume, f"{overlay}/{name}: keys from a {sorted(volume)} volume"
            kind, source = "Secret", volume["secret"]["secretName"]
        rendered = m.find(kind, source)
        if rendered is None:
            # created out of band (prod: the real issuer's JWKS): the operator is told its name and key
            assert overlay == "prod", f"{overlay}/{name}: {kind}/{source} is missing"
            assert source in doc and key in doc, f"docs/kubernetes.md must say to create {kind} {source} ({key})"
        else:
            assert key in {**(rendered.get("data") or {}), **(rendered.get("binaryData") or {})}, f"{source}: {key}"


def test_dev_processes_trust_the_development_issuers_public_key(
    manifests: dict[str, Manifests], tmp_path: Path
) -> None:
    m = manifests["dev"]
    jwks = dict(_jwks_documents(m))
    sources = set()
    for deployment in m.of_kind("Deployment"):
        for volume in pod_spec(deployment)["volumes"]:
            if volume.get("configMap", {}).get("name") in jwks:
                sources.add(volume["configMap"]["name"])
    assert len(sources) == 1, sources  # one issuer for the five
    [source] = sources
    assert source.startswith("storeplane-issuer")
    file = tmp_path / "jwks.json"
    file.write_text(json.dumps(jwks[source]))
    keys = KeySet(file=str(file))
    assert keys.generation == 1 and len(jwks[source]["keys"]) == 1
    assert jwks[source]["keys"][0]["kty"] == "EC" and jwks[source]["keys"][0]["alg"] == "ES256"


def test_reflection_is_off_in_prod_and_open_in_dev(manifests: dict[str, Manifests]) -> None:
    for overlay, wanted in (("prod", "off"), ("dev", "open"), ("base", "off")):
        m = manifests[overlay]
        for deployment in m.of_kind("Deployment"):
            assert _settings(m, deployment).get("REFLECTION") == wanted, f"{overlay}/{deployment['metadata']['name']}"


def test_the_development_issuers_keys_are_never_committed() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        missing("git and a git checkout")
    assert git is not None
    for name in ("dev-signing-key.pem", "jwks.json"):
        path = f"{DEV_ISSUER}/auth/{name}"
        ignored = subprocess.run([git, "check-ignore", "-q", path], cwd=ROOT, check=False, timeout=30)
        assert ignored.returncode == 0, f"{path} is not git-ignored"
        tracked = subprocess.run([git, "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True, check=False)
        assert tracked.returncode != 0, f"{path} is committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkout_calls_its_peers_with_a_token_from_a_mounted_secret(
    manifests: dict[str, Manifests], overlay: str
) -> None:
    """Checkout's AUTH_TOKEN_FILE lies on a whole-mounted volume of the Secret checkout-peer-token (dev: minted by
    `make dev-issuer` for exactly the scopes checkout's calls need; prod: created by the operator)."""
    m = manifests[overlay]
    deployment = next(d for d in m.of_kind("Deployment") if d["metadata"]["name"] == "checkout")
    path = _settings(m, deployment)["AUTH_TOKEN_FILE"]
    (mount,) = [mt for mt in main_container(deployment)["volumeMounts"] if path.startswith(mt["mountPath"] + "/")]
    assert not mount.get("subPath")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"].startswith("checkout-peer-token")
    assert posixpath.basename(path) == "token"
    if overlay == "dev":
        (secret,) = [s for s in m.of_kind("Secret") if s["metadata"]["name"] == volume["secret"]["secretName"]]
        token = base64.b64decode(secret["data"]["token"]).decode().strip()
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        from checkout.main import PEER_SCOPES

        assert claims["sub"] == "checkout" and set(claims["scope"].split()) == set(PEER_SCOPES)
