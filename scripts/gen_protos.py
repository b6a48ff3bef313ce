"""Generate the Python contracts (libs/contracts/src/pos/...) from protos/ with grpc_tools.protoc.

Besides the Python code it writes libs/contracts/src/pos/descriptor_set.binpb: a FileDescriptorSet of
every proto under protos/ plus google/rpc/{status,error_details,code}.proto, with all their imports and
the source info (comments). Envoy's grpc_json_transcoder serves the google.api.http bindings from it
(and needs every google.rpc detail type to render error bodies); the OpenAPI generator reads the
comments. It is generated, never committed.

The google/api and google/rpc .proto files come from the installed googleapis-common-protos wheel,
which also ships their Python modules: Python code is generated only for our own protos.

Usage: `uv run python scripts/gen_protos.py` (what `make proto` runs), or `--check` to exit 1 when
the generated code or the descriptor set is missing or older than the protos.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "libs" / "contracts" / "src"
STAMP = ROOT / "libs" / "contracts" / ".generated"
DESCRIPTOR_SET = OUT_ROOT / "pos" / "descriptor_set.binpb"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
# Put into the descriptor set beside our own protos (with their imports): the error detail types a transcoded
# error body may carry, and the codes.
EXTRA_DESCRIPTOR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto", "google/rpc/code.proto")


def googleapis_include() -> Path:
    """The directory holding google/api/*.proto and google/rpc/*.proto: the root of the installed
    googleapis-common-protos wheel (the parent of the `google` package its modules live in)."""
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise RuntimeError("googleapis-common-protos is not installed (google.api.annotations_pb2 not found)")
    root = Path(spec.origin).resolve().parent.parent.parent
    if not (root / "google" / "api" / "annotations.proto").is_file():
        raise RuntimeError(f"googleapis-common-protos at {root} ships no google/api/annotations.proto")
    return root


def proto_files() -> list[Path]:
    """All .proto files under protos/, sorted for a stable command line and digest."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def sources_digest(files: list[Path]) -> str:
    """Digest of the proto sources, the generator version and the googleapis protos they import (or the
    descriptor set carries): what the stamp records."""
    digest = hashlib.sha256()
    digest.update(importlib.metadata.version("grpcio-tools").encode())
    digest.update(importlib.metadata.version("googleapis-common-protos").encode())
    for path in files:
        digest.update(path.relative_to(PROTO_ROOT).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def descriptor_set_digest() -> str:
    return hashlib.sha256(DESCRIPTOR_SET.read_bytes()).hexdigest() if DESCRIPTOR_SET.is_file() else "missing"


def stamp_text(files: list[Path], descriptor_sha256: str) -> str:
    return (
        f"sources_sha256={sources_digest(files)}\n"
        f"grpcio_tools={importlib.metadata.version('grpcio-tools')}\n"
        f"googleapis_common_protos={importlib.metadata.version('googleapis-common-protos')}\n"
        f"files={len(files)}\n"
        f"descriptor_set_sha256={descriptor_sha256}\n"
    )


def is_current(files: list[Path]) -> bool:
    """The stamp matches the protos, and the descriptor set it recorded is there unchanged."""
    return STAMP.is_file() and STAMP.read_text() == stamp_text(files, descriptor_set_digest())


def include_args() -> list[str]:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    return [f"-I{PROTO_ROOT}", f"-I{googleapis_include()}", f"-I{well_known}"]


def run_protoc(files: list[Path], out_dir: Path) -> int:
    """Python code for our own protos only (google's modules ship in googleapis-common-protos)."""
    args = [
        "grpc_tools.protoc",
        *include_args(),
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path) for path in files),
    ]
    # protoc prints its own diagnostics (file:line: message) to stderr.
    return int(protoc.main(args))


def run_protoc_descriptor_set(files: list[Path], out_file: Path) -> int:
    """The FileDescriptorSet of our protos and EXTRA_DESCRIPTOR_PROTOS, with every import and the comments."""
    args = [
        "grpc_tools.protoc",
        *include_args(),
        f"--descriptor_set_out={out_file}",
        "--include_imports",
        "--include_source_info",
        *(path.relative_to(PROTO_ROOT).as_posix() for path in files),
        *EXTRA_DESCRIPTOR_PROTOS,
    ]
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
        out_dir = Path(tmp) / "python"
        out_dir.mkdir()
        descriptor_set = Path(tmp) / DESCRIPTOR_SET.name
        code = run_protoc(files, out_dir)
        if code == 0:
            code = run_protoc_descriptor_set(files, descriptor_set)
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
        DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(descriptor_set, DESCRIPTOR_SET)
    STAMP.write_text(stamp_text(files, descriptor_set_digest()))
    print(
        f"gen_protos: {len(files)} protos -> {count} files in {OUT_ROOT.relative_to(ROOT)},"
        f" descriptor set {DESCRIPTOR_SET.relative_to(ROOT)}"
    )
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
