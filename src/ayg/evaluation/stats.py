"""Small-sample statistics for the evaluation tables: a binomial proportion's 95 % interval
(Wilson's score interval) and the exact McNemar test of two paired accuracies. Written here
rather than taken from SciPy so that the package does not depend on it; the tests check both
against SciPy."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion successes / n (95 % by default)."""
    if n <= 0:
        raise ValueError(f"an interval needs n > 0 trials, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``b`` right only in the
    first condition, ``c`` right only in the second. Under the null each discordant pair is
    a fair coin, so p = min(1, 2·P[Bin(b + c, ½) ≤ min(b, c)]); 1 when there are none."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_counts(first: list[bool], second: list[bool]) -> tuple[int, int]:
    """(b, c) of ``mcnemar_exact``: pairs right in ``first`` only, and in ``second`` only."""
    if len(first) != len(second):
        raise ValueError(f"paired lists differ in length: {len(first)} and {len(second)}")
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return b, c


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a normal-approximation 95 % interval, mean ± z·s/√n
    (s the sample standard deviation; the interval is the mean itself for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("a mean needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * s / math.sqrt(n)
    return mean, mean - half, mean + half
