"""Scenario registry and reporting: figures, targets, ratios to the floor, and a JSON file with all of it.

A scenario is a function taking a `Bench` and returning `Figure`s. Figures may carry a target
(`at_most` / `at_least`) and a ratio to a floor figure measured in the same run; the report says
PASS or MISS for each target and `make bench` exits non-zero when any target is missed.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured number, optionally with a target and its ratio to a floor figure."""

    name: str
    value: float
    unit: str
    at_most: float | None = None
    at_least: float | None = None
    floor: str | None = None  # name of the floor figure this is compared to
    ratio: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.at_most is not None and self.value > self.at_most:
            return "MISS"
        if self.at_least is not None and self.value < self.at_least:
            return "MISS"
        if self.at_most is None and self.at_least is None:
            return ""
        return "PASS"


@dataclass
class Bench:
    """What a scenario gets: the floor figures measured first, and a scratch directory."""

    floors: dict[str, float] = field(default_factory=dict)
    workdir: Path = Path("bench-results")
    quick: bool = False

    def ratio(self, value: float, floor_name: str) -> float | None:
        floor = self.floors.get(floor_name)
        return None if not floor else value / floor


Scenario = Callable[[Bench], Sequence[Figure]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(name: str, group: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (group, fn)
        return fn

    return register


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise_latencies(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in samples_s]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms)}


def render(figures: Sequence[tuple[str, Figure]]) -> str:
    lines = [f"{'scenario':<22} {'figure':<44} {'value':>12} {'unit':<8} {'target':<12} {'ratio':<18} verdict"]
    for scenario_name, f in figures:
        target = f"<= {f.at_most:g}" if f.at_most is not None else (f">= {f.at_least:g}" if f.at_least else "")
        ratio = f"{f.ratio:.2f}x {f.floor}" if f.ratio is not None else ""
        lines.append(
            f"{scenario_name:<22} {f.name:<44} {f.value:>12.3f} {f.unit:<8} {target:<12} {ratio:<18} {f.verdict}"
        )
    return "\n".join(lines)


def write_json(path: Path, figures: Sequence[tuple[str, Figure]], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        **extra,
        "figures": [{"scenario": s, **asdict(f), "verdict": f.verdict} for s, f in figures],
    }
    path.write_text(json.dumps(payload, indent=2))


def serve_bare(service: str, method: str, handler: Any) -> None:
    """A floor's server: a bare grpcio server with only `handler` (a grpc.*_rpc_method_handler) at
    /`service`/`method`, on a free port it prints, serving until killed (`python -m benchmarks.<module>`)."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
