"""Generate the Python contracts (libs/contracts/src/pos/...) from protos/ with grpc_tools.protoc.

Usage: `uv run python scripts/gen_protos.py` (what `make proto` runs), or `--check` to exit 1 when
the generated code is missing or older than the protos.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "libs" / "contracts" / "src"
STAMP = ROOT / "libs" / "contracts" / ".generated"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    """All .proto files under protos/, sorted for a stable command line and digest."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def sources_digest(files: list[Path]) -> str:
    """Digest of the proto sources and the generator version: what the stamp records."""
    digest = hashlib.sha256()
    digest.update(importlib.metadata.version("grpcio-tools").encode())
    for path in files:
        digest.update(path.relative_to(PROTO_ROOT).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def stamp_text(files: list[Path]) -> str:
    return (
        f"sources_sha256={sources_digest(files)}\n"
        f"grpcio_tools={importlib.metadata.version('grpcio-tools')}\n"
        f"files={len(files)}\n"
    )


def is_current(files: list[Path]) -> bool:
    return STAMP.is_file() and STAMP.read_text() == stamp_text(files)


def run_protoc(files: list[Path], out_dir: Path) -> int:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path) for path in files),
    ]
    # protoc prints its own diagnostics (file:line: message) to stderr.
    return int(protoc.main(args))


def remove_stale(package_dir: Path) -> None:
    if not package_dir.is_dir():
        return
    for pattern in GENERATED_PATTERNS:
        for path in package_dir.rglob(pattern):
            path.unlink()


def generate() -> int:
    files = proto_files()
    if not files:
        print(f"gen_protos: no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    # Generate aside first, so a protoc error leaves the previous generated code in place.
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        out_dir = Path(tmp)
        code = run_protoc(files, out_dir)
        if code != 0:
            print(f"gen_protos: protoc failed (exit {code}); generated code left unchanged", file=sys.stderr)
            return code or 1
        STAMP.unlink(missing_ok=True)
        remove_stale(OUT_ROOT / "pos")
        count = 0
        for path in sorted(out_dir.rglob("*")):
            if path.is_file():
                target = OUT_ROOT / path.relative_to(out_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                count += 1
    STAMP.write_text(stamp_text(files))
    print(f"gen_protos: {len(files)} protos -> {count} files in {OUT_ROOT.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated code does not match the protos")
    args = parser.parse_args(argv)
    if args.check:
        if is_current(proto_files()):
            return 0
        print("gen_protos: generated code is stale; run `make proto`", file=sys.stderr)
        return 1
    return generate()


if __name__ == "__main__":
    sys.exit(main())
