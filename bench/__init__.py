"""Benchmarks at scale (issue 7): `python bench/run.py --institutions 10000 100000`.

Not tests: CI runs only the N=200 smoke run in tests/bench/. Where each figure
stands today: bench/RESULTS.md (one current table); each run's full log:
bench/HISTORY.md, newest on top.
"""
