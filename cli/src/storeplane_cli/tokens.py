"""`storeplane token` and `storeplane keys`: the development issuer of a data directory (`<data dir>/auth/`, made on
first use, as `storeplane run` and `up` make it) and the tokens it signs for people, scripts and the CLI's calls."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from storeplane_runtime.auth.issuer import DEFAULT_AUDIENCE, DEFAULT_ISSUER, DevIssuer
from storeplane_runtime.identity import ALL_STORES

__all__ = [
    "auth_dir",
    "cli_name",
    "default_data_dir",
    "dev_issuer",
    "has_dev_issuer",
    "parse_scopes",
    "parse_stores",
    "parse_ttl",
    "token_hint",
]

DEFAULT_TTL = "12h"
DEFAULT_SUBJECT = "developer"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TTL = re.compile(r"(-?)(\d+(?:\.\d+)?)([smhd]?)")


def default_data_dir() -> Path:
    """DATA_DIR, else ./var: where `storeplane run` keeps its databases and its development keys."""
    return Path(os.environ.get("DATA_DIR", "var"))


def auth_dir(data_dir: Path) -> Path:
    """Where a data directory keeps its development issuer's key pair (the services' default AUTH_JWKS_FILE's)."""
    return data_dir / "auth"


def dev_issuer(data_dir: Path, env: Mapping[str, str] = os.environ) -> DevIssuer:
    """The development issuer of `data_dir`, its key pair made if missing; its tokens name the issuer and audience
    that processes started from `env` expect (AUTH_ISSUER, AUTH_AUDIENCE)."""
    return DevIssuer(
        auth_dir(data_dir),
        issuer=env.get("AUTH_ISSUER") or DEFAULT_ISSUER,
        audience=env.get("AUTH_AUDIENCE") or DEFAULT_AUDIENCE,
    ).ensure()


def has_dev_issuer(data_dir: Path) -> bool:
    """Whether `data_dir` has its development issuer's key pair already."""
    issuer = DevIssuer(auth_dir(data_dir))
    return issuer.key_file.is_file() and issuer.jwks_file.is_file()


def parse_ttl(text: str) -> float:
    """Seconds from `90`, `45s`, `30m`, `12h`, `7d`; negative (`-5m`) for an already expired token, never zero."""
    match = TTL.fullmatch(text.strip())
    if not match:
        raise ValueError(f"--ttl {text!r}: a number with s, m, h or d (e.g. 12h, 30m, -5m)")
    sign, number, unit = match.groups()
    seconds = float(number) * UNITS[unit or "s"]
    if seconds == 0:
        raise ValueError("--ttl must not be zero (negative mints an expired token)")
    return -seconds if sign else seconds


def parse_scopes(text: str) -> list[str]:
    """Scopes separated by spaces or commas; an empty string is a token with no scope."""
    return [scope for scope in re.split(r"[\s,]+", text) if scope]


def parse_stores(text: str) -> list[str]:
    """`*` (every store) or store ids separated by commas; an empty string is a token for no store."""
    if not text.strip():
        return []
    stores = [store.strip() for store in text.split(",")]
    if any(not store for store in stores):
        raise ValueError(f"--stores {text!r}: an empty store id (use s1,s2 or '*')")
    if ALL_STORES in stores and len(stores) > 1:
        raise ValueError(f"--stores {text!r}: '{ALL_STORES}' stands alone")
    return stores


def cli_name() -> str:
    """This command as a person would type it again: `.venv/bin/storeplane` from the repository."""
    path = Path(sys.argv[0])
    if path.name == "storeplane" and path.is_file():
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else str(path)
    return "storeplane"


def token_hint(data_dir: Path) -> str:
    """How to get a token for the stack whose data directory is `data_dir`."""
    flag = "" if data_dir == Path("var") else f" --data-dir {data_dir}"
    return f"{cli_name()} token{flag}"


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag is one line on stderr and exit 2 (a script's `$(storeplane token)` shows why it got nothing)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The `token` and `keys` commands, for the full parser's help (main() sends both here before building it)."""
    for name, (help_text, configure) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text))


def _token_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scopes", default=None, help="space- or comma-separated (default: every scope any RPC declares)")
    p.add_argument("--stores", default=ALL_STORES, help="comma-separated store ids, or '*' for all (default)")
    p.add_argument("--ttl", default=DEFAULT_TTL, help="lifetime: s, m, h or d; negative for an expired token")
    p.add_argument("--subject", default=DEFAULT_SUBJECT, help=f"who the token names (default: {DEFAULT_SUBJECT})")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="whose keys sign (DATA_DIR, ./var)")
    p.set_defaults(func=cmd_token)


def _keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="DATA_DIR, default ./var")
    p.add_argument(
        "--peer-tokens",
        action="store_true",
        help="also write each calling service's own token to <data dir>/auth/peer-tokens/<service> (30 days)",
    )
    p.set_defaults(func=cmd_keys)


# The services that call peers, and the scopes of those calls (checkout.main.PEER_SCOPES; a test keeps them equal).
PEER_SCOPES = {"checkout": ("stock.read", "stock.write", "customer.read", "loyalty.read", "loyalty.write")}
PEER_TOKEN_TTL = 30 * 86_400.0


COMMANDS = {
    "token": (
        "a development token signed by <data dir>/auth (made on first use); prints only the token",
        _token_arguments,
    ),
    "keys": (
        "the development issuer's key pair under <data dir>/auth, made if missing; prints its JWKS",
        _keys_arguments,
    ),
}


def cmd_token(args: argparse.Namespace) -> int:
    try:
        ttl = parse_ttl(args.ttl)
        scopes = parse_scopes(args.scopes) if args.scopes is not None else None
        stores = parse_stores(args.stores)
        if not args.subject.strip():
            raise ValueError("--subject must not be empty")
    except ValueError as exc:
        print(f"storeplane token: {exc}", file=sys.stderr)
        return 2
    issuer = dev_issuer(args.data_dir)
    print(issuer.mint(subject=args.subject.strip(), scopes=scopes, stores=stores, ttl_seconds=ttl))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    issuer = dev_issuer(args.data_dir)
    if args.peer_tokens:  # what a cluster mounts as each caller's AUTH_TOKEN_FILE (the dev overlay's Secrets)
        folder = auth_dir(args.data_dir) / "peer-tokens"
        folder.mkdir(mode=0o700, exist_ok=True)
        for service, scopes in PEER_SCOPES.items():
            token = issuer.mint(subject=service, scopes=scopes, stores=["*"], ttl_seconds=PEER_TOKEN_TTL)
            path = folder / service
            path.write_text(token + "\n")
            path.chmod(0o600)
    print(issuer.jwks_file)
    return 0


def main(command: str, argv: Sequence[str]) -> int:
    """Run `token` or `keys` with no more than they need loaded (`$(storeplane token)` in a script is quick)."""
    help_text, configure = COMMANDS[command]
    parser = OneLineParser(prog=f"storeplane {command}", description=help_text)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except OSError as exc:
        print(f"storeplane {command}: {exc}", file=sys.stderr)
        return 2
