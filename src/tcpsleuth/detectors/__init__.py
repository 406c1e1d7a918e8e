"""Detectors: pure functions from records to findings (no I/O, no clock, no printing)."""
