"""oauthgate's benchmark harness: ``python -m bench`` (see docs/performance.md).

Never part of the test suite except as a smoke run (tests/integration/test_bench_smoke.py).
"""
