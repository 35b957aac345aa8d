"""How vaelab prints a metric: four significant digits, never an exponent a reader must decode.

``f"{v:.4g}"`` turns an ELBO of 12,345 nats into ``1.235e+04``; a log line is read by people,
so values from 0.001 up to 10¹⁵ print positionally (``12350``, ``335.8``, ``0.01230``) and
only the very small or very large fall back to scientific notation.
"""

from __future__ import annotations

import math

DIGITS = 4


def significant(value: float | None, digits: int = DIGITS) -> str:
    """``value`` rounded to ``digits`` significant digits, written without an exponent in
    everyday ranges (12345.6 → ``12350``)."""
    if value is None:
        return "n/a"
    v = float(value)
    if not math.isfinite(v) or v == 0:
        return f"{v:g}"
    v = float(f"{v:.{digits - 1}e}")  # rounded first: 9.99995 has the magnitude of 10.00
    magnitude = math.floor(math.log10(abs(v)))
    if not -3 <= magnitude < 15:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    return f"{round(v, decimals):.{decimals}f}"
