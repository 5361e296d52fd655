"""Benchmarks. Run all with `make bench` (or `python -m bench`); every figure is printed next to
a floor measured in the same run on the same machine, because absolute times on shared machines
vary while ratios hold."""
