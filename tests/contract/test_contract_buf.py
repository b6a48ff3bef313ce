"""buf lint (STANDARD) and buf breaking (FILE, against main) over protos/; all of it works offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_buf_lint_is_clean(buf: str, repo_root: Path) -> None:
    result = _run([buf, "lint"], repo_root)
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_buf_build_compiles_every_proto(buf: str, repo_root: Path) -> None:
    result = _run([buf, "build", "-o", "-#format=json"], repo_root)
    assert result.returncode == 0, f"buf build:\n{result.stderr}"


def test_buf_config_needs_no_registry(repo_root: Path) -> None:
    """No BSR dependencies, so lint, build and breaking run without network."""
    config = yaml.safe_load((repo_root / "buf.yaml").read_text())
    assert config["version"] == "v2"
    assert not config.get("deps")
    assert not (repo_root / "buf.lock").exists()


def _protos_differ_from_main(repo_root: Path) -> bool:
    """Tracked changes against main's protos/, or new untracked files under protos/."""
    diff = _run(["git", "diff", "--quiet", "main", "--", "protos"], repo_root)
    if diff.returncode not in (0, 1):
        pytest.fail(f"git diff main -- protos: {diff.stderr}")
    untracked = _run(["git", "ls-files", "--others", "--exclude-standard", "--", "protos"], repo_root)
    return diff.returncode == 1 or bool(untracked.stdout.strip())


def _previous_contract_commit(repo_root: Path) -> str | None:
    """The commit before the newest one that changed protos/ (None while only one commit has)."""
    log = _run(["git", "log", "-2", "--format=%H", "--", "protos"], repo_root)
    commits = log.stdout.split()
    return commits[1] if len(commits) == 2 else None


def test_no_breaking_change_against_main(buf: str, repo_root: Path) -> None:
    """Uncommitted proto edits are checked against main; on main itself (CI), the newest proto change is
    checked against the contracts as they were before it, so a breaking change cannot land unnoticed."""
    if _run(["git", "rev-parse", "--git-dir"], repo_root).returncode != 0:
        pytest.skip("not a git checkout: nothing to compare against")
    if _run(["git", "rev-parse", "--verify", "--quiet", "main:protos"], repo_root).returncode != 0:
        pytest.skip("main has no committed protos/ yet (first contract commit): nothing to break")
    if _protos_differ_from_main(repo_root):
        against = ".git#branch=main,subdir=protos"
    else:
        previous = _previous_contract_commit(repo_root)
        if previous is None:
            pytest.skip("only one commit has touched protos/: no earlier contract to break")
        if _run(["git", "rev-parse", "--verify", "--quiet", f"{previous}:protos"], repo_root).returncode != 0:
            pytest.skip("protos/ did not exist before its first commit: nothing to break")
        against = f".git#ref={previous},subdir=protos"
    # The git input clones the local repository, so no network is needed.
    result = _run([buf, "breaking", "protos", "--against", against], repo_root)
    assert result.returncode == 0, f"breaking changes against {against}:\n{result.stdout}{result.stderr}"
