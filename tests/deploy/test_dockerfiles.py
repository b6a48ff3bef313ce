"""The five Dockerfiles: hadolint clean, identical but for name and ports, built the way
docs/kubernetes.md says (cached dependency layer, protos generated in the build, a slim
non-root runtime without the toolchain, SIGTERM straight to Python), and in step with the
manifests (ports, user id). Plus the .dockerignore that shapes the build context.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import PROCESSES, ROOT, Conventions, Manifests, pod_spec, require_tool

DOCKERFILES = {name: ROOT / "services" / name / "Dockerfile" for name in PROCESSES}
APP_UID = 10001


def _stages(text: str) -> dict[str, list[str]]:
    """Instructions per stage name, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        elif current is not None:
            stages[current].append(line)
    return stages


@pytest.mark.parametrize("name", PROCESSES)
def test_hadolint_is_clean(name: str) -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_five_dockerfiles_differ_only_in_name_and_ports(conventions: Conventions) -> None:
    def normalised(name: str) -> str:
        proc = conventions.processes[name]
        text = DOCKERFILES[name].read_text()
        text = text.replace(str(proc.grpc_port), "<GRPC>").replace(str(proc.metrics_port), "<METRICS>")
        # the dependency layer copies every member's pyproject.toml, listed by name
        text = re.sub(r"COPY services/(\w+)/pyproject\.toml services/\1/", "COPY services/<ANY>/pyproject.toml", text)
        return re.sub(rf"\b{name}\b", "<NAME>", text)

    reference = normalised("stock")
    for name in PROCESSES:
        assert normalised(name) == reference, f"services/{name}/Dockerfile drifted from services/stock/Dockerfile"


@pytest.mark.parametrize("name", PROCESSES)
def test_build_stages(name: str, conventions: Conventions) -> None:
    text = DOCKERFILES[name].read_text()
    stages = _stages(text)
    assert list(stages)[-1] == "runtime", "the default target is the production image"
    assert {"builder", "base", "dev", "runtime"} <= set(stages)
    assert re.search(r"^FROM base AS dev$", text, re.M) and re.search(r"^FROM base AS runtime$", text, re.M)

    build = stages["builder"]
    first_source_copy = next(
        i for i, s in enumerate(build) if re.match(r"COPY (protos|libs|scripts|services/\w+)/ ", s)
    )
    deps = [i for i, s in enumerate(build) if "uv sync --frozen" in s and "--no-install-workspace" in s]
    assert deps and deps[0] < first_source_copy, "dependencies must be synced from the lock before sources are copied"
    for i in range(deps[0]):
        if build[i].startswith("COPY") and not build[i].startswith("COPY --from=uv "):
            assert re.match(r"COPY (pyproject\.toml uv\.lock \./|\S+/pyproject\.toml \S+/)$", build[i]), build[i]
    full_sync = max(i for i, s in enumerate(build) if "uv sync --frozen" in s)
    gen = next(i for i, s in enumerate(build) if "python scripts/gen_protos.py" in s)
    assert first_source_copy < full_sync < gen, "protos are generated after the workspace is installed"
    assert all(f"--package storeplane-{name}" in s for s in build if "uv sync" in s)
    assert any("--no-dev" in s for s in build if "uv sync" in s)

    # nothing of the toolchain in the images that run
    for stage in ("base", "dev", "runtime"):
        for instruction in stages[stage]:
            assert "--from=uv" not in instruction and not re.search(r"\buv\b", instruction.split(" ", 1)[0])
            assert not re.search(r"apt-get|apk add|pip install|gcc|build-essential", instruction), instruction
            if instruction.startswith("COPY --from="):
                assert "--from=builder" in instruction

    base = stages["base"]
    assert "STOPSIGNAL SIGTERM" in base
    (entrypoint,) = [s for s in base if s.startswith("ENTRYPOINT")]
    assert json.loads(entrypoint.split(" ", 1)[1]) == ["python", "-m", conventions.processes[name].package]
    (cmd,) = [s for s in base if s.startswith("CMD")]
    assert json.loads(cmd.split(" ", 1)[1]) == ["serve"]
    (user,) = [s for s in base if s.startswith("USER")]
    assert user == f"USER {APP_UID}:{APP_UID}"
    (expose,) = [s for s in base if s.startswith("EXPOSE")]
    proc = conventions.processes[name]
    assert expose.split()[1:] == [str(proc.grpc_port), str(proc.metrics_port)]
    env = " ".join(s for s in base if s.startswith("ENV"))
    assert f"GRPC_PORT={proc.grpc_port}" in env and f"METRICS_PORT={proc.metrics_port}" in env

    # dev: the app user owns /app so Tilt can sync into it; runtime: it cannot write its code
    assert any(s.startswith(f"COPY --from=builder --chown={APP_UID}:{APP_UID} /app /app") for s in stages["dev"])
    assert "COPY --from=builder /app /app" in stages["runtime"]


def test_pods_run_as_the_image_user(manifests: dict[str, Manifests]) -> None:
    for overlay in ("dev", "prod"):
        for deployment in manifests[overlay].of_kind("Deployment"):
            sc = pod_spec(deployment)["securityContext"]
            assert sc["runAsUser"] == APP_UID and sc["runAsGroup"] == APP_UID and sc["fsGroup"] == APP_UID


# --- .dockerignore ----------------------------------------------------------------------


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rules: last matching pattern wins, `!` re-includes, a match on a parent dir counts."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out += pattern[i : end + 1]
                i = end + 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(f"^{out}$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        rx = regex(pattern)
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_needs_and_nothing_else() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    kept = [
        "pyproject.toml",
        "uv.lock",
        "cli/pyproject.toml",
        "libs/runtime/pyproject.toml",
        "libs/runtime/src/storeplane_runtime/app.py",
        "libs/contracts/src/pos/__init__.py",
        "services/stock/pyproject.toml",
        "services/stock/src/stock/main.py",
        "services/stock/migrations/env.py",
        "services/stock/Dockerfile",
        "protos/pos/stock/v1/stock.proto",
        "scripts/gen_protos.py",
    ]
    dropped = [
        ".git/HEAD",
        ".venv/bin/python",
        "k8s/base/kustomization.yaml",
        "Tiltfile",
        "docs/conventions.md",
        "tests/deploy/test_dockerfiles.py",
        "cli/src/storeplane_cli/main.py",
        "services/stock/tests/test_api.py",
        "services/stock/src/stock/__pycache__/main.cpython-311.pyc",
        "libs/contracts/src/pos/stock/v1/stock_pb2.py",
        "libs/contracts/src/pos/stock/v1/stock_pb2_grpc.py",
        "libs/contracts/src/pos/stock/v1/stock_pb2.pyi",
        "var/stock.db",
    ]
    for path in kept:
        assert not _dockerignore_excludes(patterns, path), f"{path} must be in the build context"
    for path in dropped:
        assert _dockerignore_excludes(patterns, path), f"{path} must not be in the build context"


def test_every_file_the_dockerfiles_copy_is_in_the_repository() -> None:
    for name, dockerfile in DOCKERFILES.items():
        for line in _stages(dockerfile.read_text())["builder"]:
            if line.startswith("COPY ") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"services/{name}/Dockerfile copies missing {src}"
                    if src == "scripts/":
                        assert (ROOT / "scripts" / "gen_protos.py").is_file(), "scripts/gen_protos.py"


def test_dockerfiles_exist_only_where_expected() -> None:
    found = {p.parent.name for p in Path(ROOT / "services").glob("*/Dockerfile")}
    assert found == set(PROCESSES)
