"""The few statistics NeMo Gym's aggregate metrics use, in plain Python (no numpy, pandas or scipy here).

Each one follows the definition the reference uses: ``sample_std`` is pandas' ``std()`` (ddof=1), ``quantile``
is numpy's default ``linear`` method (pandas' ``Series.quantile``), ``t_interval`` is scipy's
``stats.t.interval`` (a two-sided Student-t interval; the quantile by Newton's method on the t CDF, computed
from the regularised incomplete beta function). Sums are exact (``math.fsum``), so results agree with numpy's
pairwise sums to the last bit or two, never more.

    t_interval(0.5, 0.1, 10)   # (0.2737.., 0.7262..): mean 0.5, standard error 0.1, 10 values
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["mean", "median", "quantile", "sample_std", "t_interval", "t_ppf"]


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with ddof=1 (pandas' ``std()``); NaN below two values, as pandas gives."""
    n = len(values)
    if n < 2:
        return math.nan
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (n - 1))


def quantile(values: Sequence[float], q: float) -> float:
    """numpy's ``linear`` quantile (also pandas' ``Series.quantile`` default), with numpy's two-sided lerp."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    a, b, t = ordered[below], ordered[above], position - below
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _log_gamma_ratio_half(a: float) -> float:
    """ln Γ(a + 1/2) - ln Γ(a), without the cancellation of two large ``lgamma`` values (asymptotic series)."""
    if a < 30:
        return math.lgamma(a + 0.5) - math.lgamma(a)
    z = 1.0 / a
    z2 = z * z
    return 0.5 * math.log(a) + z * (-1 / 8 + z2 * (1 / 192 + z2 * (-1 / 640 + z2 * (17 / 14336 - z2 * 31 / 18432))))


def _t_tail(t: float, df: int) -> float:
    """P(T > t) for t >= 0: half the regularised incomplete beta I_x(df/2, 1/2), x = df / (df + t²)."""
    a, u = df / 2.0, t * t / df
    x, y = 1.0 / (1.0 + u), u / (1.0 + u)  # x and 1 - x, each computed directly
    if y == 0.0:
        return 0.5
    log_front = _log_gamma_ratio_half(a) - math.lgamma(0.5) - a * math.log1p(u) + 0.5 * math.log(y)
    if x < (a + 1.0) / (a + 2.5):
        return 0.5 * math.exp(log_front) * _beta_fraction(a, 0.5, x) / a
    return 0.5 * (1.0 - math.exp(log_front) * _beta_fraction(0.5, a, y) / 0.5)


def _t_pdf(t: float, df: int) -> float:
    log_norm = _log_gamma_ratio_half(df / 2.0) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def t_ppf(p: float, df: int) -> float:
    """The p quantile of Student's t with ``df`` degrees of freedom (scipy's ``stats.t.ppf``), 0 < p < 1."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    q = 1.0 - p  # exact for p >= 1/2; the upper tail is what is solved for, without cancellation
    z = statistics.NormalDist().inv_cdf(p)
    # The Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5): exact to double precision for many degrees of
    # freedom, where the incomplete beta's continued fraction is long; a start for Newton's method otherwise.
    z2 = z * z
    t = z + z * (z2 + 1) / (4 * df) + z * ((5 * z2 + 16) * z2 + 3) / (96 * df ** 2)
    if df > 1000:
        return t + (z * (((3 * z2 + 19) * z2 + 17) * z2 - 15) / (384 * df ** 3)
                    + z * ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) / (92160 * df ** 4))
    for _ in range(50):
        step = (_t_tail(t, df) - q) / _t_pdf(t, df)
        t += step
        if abs(step) <= 1e-15 * max(1.0, abs(t)):
            break
    return t


def t_interval(centre: float, scale: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Student-t interval of ``n`` values around ``centre`` (scipy's ``stats.t.interval``)."""
    q = t_ppf((1 + confidence) / 2, n - 1)
    return centre - q * scale, centre + q * scale
