"""`storeplane token` mints development tokens the services accept; `storeplane keys` makes the key pair."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storeplane_cli.main import main
from storeplane_cli.tokens import parse_scopes, parse_stores, parse_ttl
from storeplane_runtime.auth.issuer import declared_scopes
from storeplane_runtime.auth.keys import KeySet
from storeplane_runtime.auth.tokens import TokenRefused, TokenVerifier
from storeplane_runtime.identity import Identity


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def _verify(data_dir: Path, token: str) -> Identity:
    keys = KeySet(file=str(data_dir / "auth" / "jwks.json"))
    return TokenVerifier(keys, issuer="storeplane-dev", audience="storeplane").verify(token)


def test_default_token_has_every_declared_scope_all_stores_and_twelve_hours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "token", "--data-dir", str(tmp_path))
    assert code == 0 and err == ""
    assert out.count("\n") == 1  # only the token: `$(storeplane token)` is the token
    identity = _verify(tmp_path, out.strip())
    assert identity.subject == "developer"
    assert identity.scopes == frozenset(declared_scopes())
    assert "stock.read" in identity.scopes
    assert identity.stores == frozenset({"*"})
    assert identity.expires_at == pytest.approx(time.time() + 12 * 3600, abs=60)


def test_first_use_makes_the_key_pair_and_later_uses_keep_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, jwks = tmp_path / "auth" / "dev-signing-key.pem", tmp_path / "auth" / "jwks.json"
    assert not key.exists()
    _, first, _ = _run(capsys, "token", "--data-dir", str(tmp_path))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pem, published = key.read_bytes(), jwks.read_text()
    assert "PRIVATE" not in published and len(json.loads(published)["keys"]) == 1
    _, second, _ = _run(capsys, "token", "--data-dir", str(tmp_path))
    assert key.read_bytes() == pem and jwks.read_text() == published
    assert _verify(tmp_path, first.strip()).subject == _verify(tmp_path, second.strip()).subject


def test_scopes_stores_ttl_and_subject_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        "token",
        "--data-dir",
        str(tmp_path),
        "--scopes",
        "stock.read stock.write",
        "--stores",
        "berlin-mitte, zurich-bahnhofstrasse",
        "--ttl",
        "30m",
        "--subject",
        "till-7",
    )
    assert code == 0
    identity = _verify(tmp_path, out.strip())
    assert identity.subject == "till-7"
    assert identity.scopes == frozenset({"stock.read", "stock.write"})
    assert identity.stores == frozenset({"berlin-mitte", "zurich-bahnhofstrasse"})
    assert identity.expires_at == pytest.approx(time.time() + 1800, abs=60)


def test_a_token_with_no_scope_is_possible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "token", "--data-dir", str(tmp_path), "--scopes", "")
    assert _verify(tmp_path, out.strip()).scopes == frozenset()


def test_a_negative_ttl_mints_an_expired_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "token", "--data-dir", str(tmp_path), "--ttl=-5m")
    assert code == 0
    with pytest.raises(TokenRefused) as refused:
        _verify(tmp_path, out.strip())
    assert refused.value.reason == "TOKEN_EXPIRED"


def test_a_token_of_another_data_dir_does_not_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "keys", "--data-dir", str(tmp_path / "one"))
    _, out, _ = _run(capsys, "token", "--data-dir", str(tmp_path / "other"))
    with pytest.raises(TokenRefused) as refused:
        _verify(tmp_path / "one", out.strip())
    assert refused.value.reason == "UNKNOWN_KEY"


def test_ttl_takes_seconds_minutes_hours_and_days() -> None:
    assert parse_ttl("90") == 90
    assert parse_ttl("45s") == 45
    assert parse_ttl("5m") == 300
    assert parse_ttl("12h") == 12 * 3600
    assert parse_ttl("1.5h") == 5400
    assert parse_ttl("7d") == 7 * 86400
    assert parse_ttl("-5m") == -300
    for bad in ("", "m", "5x", "5 m", "--5m", "0", "0h", "h5"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_scopes_and_stores_are_split_as_written() -> None:
    assert parse_scopes("stock.read  stock.write,loyalty.read") == ["stock.read", "stock.write", "loyalty.read"]
    assert parse_scopes("") == []
    assert parse_stores("*") == ["*"]
    assert parse_stores("berlin-mitte,zurich-bahnhofstrasse") == ["berlin-mitte", "zurich-bahnhofstrasse"]
    assert parse_stores("") == []
    for bad in ("a,,b", "a,", "*,berlin-mitte"):
        with pytest.raises(ValueError):
            parse_stores(bad)


@pytest.mark.parametrize(
    "flags",
    [
        ["--ttl", "5x"],
        ["--ttl", "0"],
        ["--ttl", "-5m"],  # argparse reads -5m as a flag: --ttl=-5m is the way
        ["--stores", "a,,b"],
        ["--subject", " "],
        ["--nope"],
        ["--scopes"],
    ],
)
def test_a_bad_flag_is_one_line_on_stderr_and_exit_2(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "token", "--data-dir", str(tmp_path), *flags)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("storeplane token: "), err


def test_keys_prints_the_jwks_file_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "keys", "--data-dir", str(tmp_path))
    assert code == 0
    assert Path(out.strip()) == tmp_path / "auth" / "jwks.json"
    assert KeySet(file=out.strip()).generation == 1
    assert (tmp_path / "auth" / "dev-signing-key.pem").exists()


def test_the_command_prints_the_token_alone_for_a_shell(tmp_path: Path) -> None:
    """What `$(storeplane token)` captures: the token and a newline, nothing on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "storeplane_cli", "token", "--data-dir", str(tmp_path), "--subject", "script"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1
    assert _verify(tmp_path, done.stdout.strip()).subject == "script"
