"""Metric values as text: one formatter for the comparison table, the evaluate report and
the stages' one-line summaries, each a :class:`MetricStyle`.

A value is a number, a bool, None (not computed) or ``{"absent": reason}`` (the metrics
JSON's absent metric); anything else is shown as ``str(value)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class MetricStyle:
    """How :func:`format_metric` writes each kind of value."""

    number: str  # format spec of a number
    integer: Optional[str]  # format spec of an int (None: ``number``)
    whole: Optional[str]  # format spec of an integer-valued number (int or
    # float) of magnitude 1 or more (None: no rule)
    absent: str  # template with {reason}
    none: str  # None
    booleans: Optional[tuple[str, str]]  # (true, false); None: a bool is a number


# artifacts/evaluate/comparison.md
TABLE = MetricStyle(".2f", None, ".0f", "absent ({reason})", "n/a", ("yes", "no"))
# the evaluate report's metrics table (index.html)
REPORT = MetricStyle(".4g", "d", None, "absent: {reason}", "None", ("True", "False"))
# the stages' one-line summaries
SHORT = MetricStyle(".1f", None, None, "absent", "None", None)


def format_metric(value: Any, style: MetricStyle = TABLE) -> str:
    """A metric value as text.

    Args:
        value: the metric (as in a metrics JSON).
        style: TABLE, REPORT, SHORT or another MetricStyle.

    Returns:
        The text.
    """
    if value is None:
        return style.none
    if isinstance(value, dict) and "absent" in value:
        return style.absent.format(reason=value["absent"])
    if isinstance(value, bool) and style.booleans is not None:
        return style.booleans[0] if value else style.booleans[1]
    if not isinstance(value, (int, float)):
        return str(value)
    if style.whole is not None and float(value).is_integer() and abs(value) >= 1:
        return format(value, style.whole)
    if isinstance(value, int) and style.integer is not None:
        return format(value, style.integer)
    return format(value, style.number)
