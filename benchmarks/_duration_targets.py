"""CPU-bound functions of known growth for bench_duration_prediction.py (pure Python).

The measured sizes keep the loop counters above 256, where CPython stops
handing out its cached small ints: below that a loop step costs less, and the
smallest sizes would be cheaper per step than the rest."""
from __future__ import annotations

import random


def make_n(n: int) -> int:
    return n


def make_floats(n: int) -> list[float]:
    rng = random.Random(n)
    return [rng.random() for _ in range(n)]


def linear(n: int) -> int:
    """O(n): one pass of arithmetic."""
    total = 0
    for i in range(n):
        total += (i ^ 5) & 7
    return total


def nlogn(xs: list[float]) -> float:
    """O(n log n): a comparison sort of shuffled floats."""
    return sorted(xs)[len(xs) // 2]


def quadratic(n: int) -> int:
    """O(n^2): every pair."""
    total = 0
    for i in range(n):
        for j in range(n):
            total += (i ^ j) & 1
    return total
