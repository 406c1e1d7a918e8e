"""Units as the reports give them: one conversion, its rounding said where it is used."""

from __future__ import annotations


def ms_from_us(microseconds: int | float | None, digits: int = 3) -> float | int | None:
    """Microseconds (tcp_info's unit) in milliseconds, rounded to ``digits`` decimals
    (0: a whole number, as an int); None stays None (unknown)."""
    if microseconds is None:
        return None
    value = microseconds / 1000
    return round(value, digits) if digits else round(value)


def ms_or_none(milliseconds: float) -> float | None:
    """Milliseconds from a float column, to 3 decimals; NaN (unknown) as None."""
    return None if milliseconds != milliseconds else round(float(milliseconds), 3)
