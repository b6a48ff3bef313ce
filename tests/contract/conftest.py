"""Fixtures of the contract tests: the buf binary and the descriptors of the generated pos.* code."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FileDescriptor

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_SRC = ROOT / "libs" / "contracts" / "src"
GEN_SCRIPT = ROOT / "scripts" / "gen_protos.py"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def buf() -> str:
    """The buf CLI: on PATH, or in the venv's bin dir beside this interpreter (package buf-bin)."""
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("buf not found: install the dev dependency group (buf-bin)")
    return found


def _gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def pos_files() -> list[FileDescriptor]:
    """File descriptors of every generated pos.* module, regenerated first if the protos changed."""
    if _gen("--check").returncode != 0:
        result = _gen()
        assert result.returncode == 0, f"gen_protos failed:\n{result.stdout}{result.stderr}"
        importlib.invalidate_caches()
    if importlib.util.find_spec("pos") is None:  # contracts not installed in this environment
        sys.path.insert(0, str(CONTRACTS_SRC))
    files = []
    for path in sorted((CONTRACTS_SRC / "pos").rglob("*_pb2.py")):
        module_name = ".".join(path.relative_to(CONTRACTS_SRC).with_suffix("").parts)
        files.append(importlib.import_module(module_name).DESCRIPTOR)
    assert files, "no generated pos.* modules"
    return files
