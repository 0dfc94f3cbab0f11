"""Benchmarks at scale (issue 7): `python bench/run.py --institutions 10000 100000`.

Not tests: CI runs only the N=200 smoke run in tests/bench/. Results go to
bench/RESULTS.md, newest on top.
"""
