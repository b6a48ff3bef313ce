"""services/Dockerfile, the one image definition of the five processes: hadolint clean,
SERVICE a required build argument in scope wherever it is used, and, built for each process
(the ARG substituted as the builder does), the way docs/kubernetes.md says (cached
dependency layer, protos generated in the build, only that service's sources, a slim
non-root runtime without the toolchain, SIGTERM straight to Python through the service's
console script), in step with the manifests (user id) and the runtime's default ports.
Plus the .dockerignore that shapes the build context.
"""

from __future__ import annotations

import ast
import glob
import json
import re
import shlex
import subprocess
import tomllib

import pytest
from deploy_helpers import (
    DB_SERVICES,
    DOCKERFILE,
    PROCESSES,
    ROOT,
    Conventions,
    Manifests,
    dockerfile_entrypoint,
    dockerfile_for,
    dockerfile_stages,
    pod_spec,
    require_tool,
)

APP_UID = 10001
ENTRYPOINT = "/app/.venv/bin/storeplane-service"
USES_SERVICE = re.compile(r"\$\{?SERVICE\b")


def _words(instruction: str) -> list[str]:
    return shlex.split(instruction.replace(";", " ; "))


def _copy_sources(instruction: str) -> list[str]:
    args = [a for a in shlex.split(instruction)[1:] if not a.startswith("--")]
    return args[:-1]


def test_hadolint_is_clean() -> None:
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_dockerfile_for_every_process() -> None:
    assert DOCKERFILE.is_file()
    per_service = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/Dockerfile*"))
    assert not per_service, f"the processes share services/Dockerfile; found {per_service}"


def test_service_is_in_scope_wherever_it_is_used() -> None:
    """An ARG is visible only in the stage that declares it (after the declaration);
    elsewhere ${SERVICE} would silently expand to nothing."""
    for stage, instructions in dockerfile_stages(DOCKERFILE.read_text()).items():
        declared = False
        for instruction in instructions:
            if re.fullmatch(r"ARG SERVICE(=.*)?", instruction):
                assert "=" not in instruction, "SERVICE has no default: the build must say which process"
                declared = True
            elif USES_SERVICE.search(instruction):
                assert declared, f"{stage}: {instruction!r} uses SERVICE before `ARG SERVICE`"


def test_a_build_without_a_valid_service_stops_first() -> None:
    """The builder's first use of SERVICE is a check that fails, saying how to build,
    when SERVICE is missing or names no service; it lets every real process through."""
    builder = dockerfile_stages(DOCKERFILE.read_text())["builder"]
    uses = [s for s in builder if USES_SERVICE.search(s)]
    check = uses[0]
    assert check.startswith("RUN ") and "uv " not in check, check
    script = check.removeprefix("RUN ")
    # run it where the builder runs it: the workspace's pyproject.toml files are in place
    for bad in ("", "nope", "libs", "Stock"):
        proc = subprocess.run(
            ["/bin/sh", "-c", script], cwd=ROOT, env={"SERVICE": bad}, capture_output=True, text=True, check=False
        )
        assert proc.returncode != 0, f"SERVICE={bad!r} must stop the build"
        assert "--build-arg SERVICE=" in proc.stderr, proc.stderr
        assert all(f"services/{name}/" in proc.stderr for name in PROCESSES), "the message names the choices"
    for name in PROCESSES:
        proc = subprocess.run(
            ["/bin/sh", "-c", script], cwd=ROOT, env={"SERVICE": name}, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr


def test_dependency_layer_reads_every_workspace_member() -> None:
    """uv needs every member's pyproject.toml to read the workspace (and the lock)."""
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    members = {
        path.removeprefix(str(ROOT) + "/")
        for pattern in workspace
        for path in glob.glob(str(ROOT / pattern))
        if (ROOT / path / "pyproject.toml").is_file()
    }
    builder = dockerfile_stages(DOCKERFILE.read_text())["builder"]
    copied = {src for s in builder if s.startswith("COPY ") and "--from=" not in s for src in _copy_sources(s)}
    missing = {f"{m}/pyproject.toml" for m in members} - copied
    assert not missing, missing
    assert {"pyproject.toml", "uv.lock"} <= copied


@pytest.mark.parametrize("name", PROCESSES)
def test_build_stages(name: str) -> None:
    text = dockerfile_for(name)
    stages = dockerfile_stages(text)
    assert list(stages)[-1] == "runtime", "the default target is the production image"
    assert {"builder", "base", "dev", "runtime"} <= set(stages)
    assert re.search(r"^FROM base AS dev$", text, re.M) and re.search(r"^FROM base AS runtime$", text, re.M)

    build = stages["builder"]
    source_copies = [i for i, s in enumerate(build) if re.match(r"COPY (protos|libs|scripts|services/[\w.]+)/ ", s)]
    first_source_copy = source_copies[0]
    deps = [i for i, s in enumerate(build) if "uv sync --frozen" in s and "--no-install-workspace" in s]
    assert deps and deps[0] < first_source_copy, "dependencies must be synced from the lock before sources are copied"
    for i in range(deps[0]):
        if build[i].startswith("COPY") and not build[i].startswith("COPY --from=uv "):
            assert re.match(r"COPY (pyproject\.toml uv\.lock \./|\S+/pyproject\.toml \S+/)$", build[i]), build[i]
    full_sync = max(i for i, s in enumerate(build) if "uv sync --frozen" in s)
    gen = next(i for i, s in enumerate(build) if "python scripts/gen_protos.py" in s)
    assert first_source_copy < full_sync < gen, "protos are generated after the workspace is installed"
    syncs = [_words(s) for s in build if "uv sync" in s]
    assert all(w[w.index("--package") + 1] == f"storeplane-{name}" for w in syncs), syncs
    assert all("--no-dev" in w for w in syncs)

    # the sources of this service only, next to the contracts, the runtime and the generator
    sources = {src for i in source_copies for src in _copy_sources(build[i])}
    assert sources == {"protos/", "scripts/", "libs/", f"services/{name}/"}, sources

    # nothing of the toolchain in the images that run
    for stage in ("base", "dev", "runtime"):
        for instruction in stages[stage]:
            assert "--from=uv" not in instruction and not re.search(r"\buv\b", instruction.split(" ", 1)[0])
            assert not re.search(r"apt-get|apk add|pip install|gcc|build-essential", instruction), instruction
            if instruction.startswith("COPY --from="):
                assert "--from=builder" in instruction

    base = stages["base"]
    assert "STOPSIGNAL SIGTERM" in base
    (cmd,) = [s for s in base if s.startswith("CMD")]
    assert json.loads(cmd.split(" ", 1)[1]) == ["serve"]
    (user,) = [s for s in base if s.startswith("USER")]
    assert user == f"USER {APP_UID}:{APP_UID}"

    # dev: the app user owns /app so Tilt can sync into it; runtime: it cannot write its code
    assert any(s.startswith(f"COPY --from=builder --chown={APP_UID}:{APP_UID} /app /app") for s in stages["dev"])
    assert "COPY --from=builder /app /app" in stages["runtime"]
    for stage in ("dev", "runtime"):
        assert f"WORKDIR /app/services/{name}" in stages[stage], "paths relative to the code work as in a checkout"


@pytest.mark.parametrize("name", PROCESSES)
def test_entrypoint_is_the_services_console_script(name: str, conventions: Conventions) -> None:
    """Exec form on a fixed path, linked in the builder to `storeplane-<name>`: the
    console script (whose shebang is the venv's python) becomes PID 1, no shell between."""
    assert dockerfile_entrypoint() == [ENTRYPOINT]
    build = dockerfile_stages(dockerfile_for(name))["builder"]
    links = [
        (w[i + 2], w[i + 3])
        for w in (_words(s) for s in build if s.startswith("RUN "))
        for i in range(len(w) - 3)
        if w[i] == "ln" and w[i + 1] == "-s"
    ]
    assert links == [(f"storeplane-{name}", ENTRYPOINT)], links
    # a relative link inside the venv's bin: still right after `COPY --from=builder /app /app`
    assert "/" not in links[0][0]
    venv_bin = ENTRYPOINT.rsplit("/", 1)[0]
    assert any("UV_PROJECT_ENVIRONMENT=" + venv_bin.removesuffix("/bin") in s for s in build if s.startswith("ENV"))

    # the console script exists for this service and runs its command line (serve/migrate)
    project = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())["project"]
    package = conventions.processes[name].package
    assert project["name"] == f"storeplane-{name}"
    assert project.get("scripts", {}).get(f"storeplane-{name}") == f"{package}.main:cli"
    main = ROOT / "services" / name / "src" / package / "main.py"
    functions = {n.name for n in ast.walk(ast.parse(main.read_text())) if isinstance(n, ast.FunctionDef)}
    assert "cli" in functions, f"{main.relative_to(ROOT)} has no cli()"
    # the build runs it once, through the link, as a smoke test
    assert any(f"{ENTRYPOINT} --help" in s for s in build if s.startswith("RUN "))


def test_ports_come_from_the_process_not_the_image(conventions: Conventions) -> None:
    """The image bakes no port in: each process defaults to its own (docs/conventions.md),
    and the ConfigMaps set GRPC_PORT/METRICS_PORT explicitly."""
    from storeplane_runtime.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

    for stage, instructions in dockerfile_stages(DOCKERFILE.read_text()).items():
        for instruction in instructions:
            assert not re.search(r"\b(GRPC_PORT|METRICS_PORT)=", instruction), f"{stage}: {instruction}"
            assert not re.match(r"EXPOSE\s+\d", instruction), f"{stage}: {instruction}"
    for name, proc in conventions.processes.items():
        assert DEFAULT_PORTS[name] == proc.grpc_port and DEFAULT_METRICS_PORTS[name] == proc.metrics_port, name


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
    for name in PROCESSES:  # what services/Dockerfile copies for each process
        kept += [f"services/{name}/pyproject.toml", f"services/{name}/src/{name}/main.py"]
        if name in DB_SERVICES:
            kept.append(f"services/{name}/migrations/env.py")
    for path in kept:
        assert not _dockerignore_excludes(patterns, path), f"{path} must be in the build context"
    for path in dropped:
        assert _dockerignore_excludes(patterns, path), f"{path} must not be in the build context"


@pytest.mark.parametrize("name", PROCESSES)
def test_every_file_the_dockerfile_copies_is_in_the_repository(name: str) -> None:
    for line in dockerfile_stages(dockerfile_for(name))["builder"]:
        if line.startswith("COPY ") and "--from=" not in line:
            for src in _copy_sources(line):
                assert (ROOT / src).exists(), f"services/Dockerfile with SERVICE={name} copies missing {src}"
                if src == "scripts/":
                    assert (ROOT / "scripts" / "gen_protos.py").is_file(), "scripts/gen_protos.py"
                if src == f"services/{name}/" and name in DB_SERVICES:
                    assert (ROOT / src / "migrations").is_dir(), f"{src}migrations"
