"""One formatter for metric values: the comparison table, the report, the summaries."""

from __future__ import annotations

import pytest

from model.formatting import REPORT, SHORT, TABLE, format_metric

ABSENT = {"absent": "no ground-truth part keypoints"}


@pytest.mark.parametrize(
    "value,table,report,short",
    [
        (None, "n/a", "None", "None"),
        (True, "yes", "True", "1.0"),
        (False, "no", "False", "0.0"),
        (0, "0.00", "0", "0.0"),
        (12, "12", "12", "12.0"),
        (0.0, "0.00", "0", "0.0"),
        (50.0, "50", "50", "50.0"),
        (-3.0, "-3", "-3", "-3.0"),
        (0.5, "0.50", "0.5", "0.5"),
        (66.66666, "66.67", "66.67", "66.7"),
        (12345.5, "12345.50", "1.235e+04", "12345.5"),
        (
            ABSENT,
            "absent (no ground-truth part keypoints)",
            "absent: no ground-truth part keypoints",
            "absent",
        ),
        ("prp", "prp", "prp", "prp"),
    ],
)
def test_each_style(value: object, table: str, report: str, short: str) -> None:
    assert format_metric(value, TABLE) == table
    assert format_metric(value, REPORT) == report
    assert format_metric(value, SHORT) == short
    assert format_metric(value) == table


def test_the_comparison_and_the_report_use_it() -> None:
    from model.comparison import comparison_markdown
    from pipeline.params import EvaluateParams

    doc = {
        "run": {"test_images": 6},
        "segmenter": {"fallback_share": 0.0},
        "balanced_accuracy": 66.666,
        "consistency": ABSENT,
    }
    md = comparison_markdown(
        {"protomask": {0: doc}, "protopnet": {0: dict(doc, balanced_accuracy=50.0)}},
        EvaluateParams(),
    )
    assert "| balanced accuracy (%) | 66.67 | 50 | higher |" in md
    assert "| consistency (%) | absent (no ground-truth part keypoints) |" in md
