"""Figures as words: shared by the console reporter and the HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageRow:
    """One line of a report's stage table, whatever ran the stage (a check, the simulator)."""

    id: str
    title: str
    threshold: str
    verdict: str  # PASS, FAIL, SKIP, or "-" for figures only
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


def plain(value: Any) -> str:
    """A figure as a person reads it: 1,234 and 0.125, dicts and lists flattened."""
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
