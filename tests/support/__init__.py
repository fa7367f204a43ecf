"""Helpers that several test areas share (no tests here): tiny models built in code, the recover stage's runner.

tests/tiny.py (the tiny params) and tests/fuzz.py (the fuzz harness) stay at the top: benchmarks and docs name them.
"""
