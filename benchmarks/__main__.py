"""`make bench`: run the floors, then every scenario (or those named with --only), print and save figures."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

from benchmarks.harness import SCENARIOS, Bench, Figure, render, write_json


def load_scenarios() -> None:
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name not in {"harness", "__main__"}:
            importlib.import_module(f"benchmarks.{module.name}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--only", nargs="*", default=[], help="scenario names (floors always run)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--out", default="bench-results/bench.json")
    args = parser.parse_args()
    load_scenarios()
    bench = Bench(workdir=Path(args.out).parent, quick=args.quick)
    results: list[tuple[str, Figure]] = []
    failures: list[str] = []
    order = sorted(SCENARIOS.items(), key=lambda kv: (kv[1][0] != "floor", kv[1][0], kv[0]))
    for name, (group, fn) in order:
        if group != "floor" and args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            figures = list(fn(bench))
        except Exception:
            traceback.print_exc()
            failures.append(name)
            continue
        for figure in figures:
            if group == "floor":
                bench.floors[figure.name] = figure.value
            results.append((name, figure))
    print(render(results))
    write_json(Path(args.out), results, {"failed_scenarios": failures})
    print(f"\nfigures written to {args.out}")
    missed = [f"{s}:{f.name}" for s, f in results if f.verdict == "MISS"]
    if failures or missed:
        print(f"failed scenarios: {failures or 'none'}; missed targets: {missed or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
