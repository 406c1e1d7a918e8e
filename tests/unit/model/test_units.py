"""model.units: the one conversion of microseconds to milliseconds, its rounding."""

from __future__ import annotations

from tcpsleuth.model.units import ms_from_us, ms_or_none


def test_microseconds_become_milliseconds_rounded_as_asked() -> None:
    assert ms_from_us(1234567) == 1234.567
    assert ms_from_us(1234567, 1) == 1234.6
    whole = ms_from_us(1234567, 0)
    assert whole == 1235 and isinstance(whole, int)  # a table's whole number, not 1235.0
    assert ms_from_us(None) is None and ms_from_us(None, 0) is None


def test_a_nan_column_value_is_unknown() -> None:
    assert ms_or_none(float("nan")) is None
    assert ms_or_none(2.34567) == 2.346
