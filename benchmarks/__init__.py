"""Benchmarks (`make bench`): each scenario is measured beside a floor taken in the same run."""
