"""Typed records and the findings model shared by every layer."""
