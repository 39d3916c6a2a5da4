"""compare: the claim decided from the numbers, and no verdict on thin evidence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from model.comparison import comparison_markdown, run_compare, verdict
from pipeline import layout
from pipeline.errors import ArtifactError
from pipeline.params import EvaluateParams

RULES = EvaluateParams()
ENOUGH = {"test_images": 120, "seeds": 3, "fallback_share": 0.0}
GOOD = dict(ENOUGH, background_overlap=10.0, object_overlap=50.0, consistency=40.0)
BAD = dict(ENOUGH, background_overlap=30.0, object_overlap=20.0, consistency=10.0)


def test_the_claim_is_decided_from_the_numbers() -> None:
    assert verdict({"protomask": GOOD, "protopnet": BAD}, RULES).holds is True
    result = verdict({"protomask": BAD, "protopnet": GOOD}, RULES)
    assert result.holds is False and result.sentence.startswith("The claim does not hold")
    absent = dict(GOOD, consistency={"absent": "no ground-truth part keypoints"})
    result = verdict({"protomask": absent, "protopnet": BAD}, RULES)
    assert result.holds is None and "cannot be compared" in result.sentence
    md = comparison_markdown({"protomask": absent, "protopnet": BAD}, RULES)
    assert "absent (no ground-truth part keypoints)" in md


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"test_images": 2}, "evaluate.verdict_min_test_images"),
        ({"seeds": 1}, "evaluate.verdict_min_seeds"),
        ({"fallback_share": 100.0}, "evaluate.verdict_max_fallback_share"),
    ],
)
def test_thin_evidence_gives_no_verdict_and_says_why(change: dict, reason: str) -> None:
    result = verdict({"protomask": dict(GOOD, **change), "protopnet": BAD}, RULES)
    assert result.holds is None and reason in result.reason
    assert result.sentence.startswith("No verdict on the claim")
    assert "not a finding" in result.sentence and "10.00 vs 30.00" in result.sentence
    md = comparison_markdown({"protomask": dict(GOOD, **change), "protopnet": BAD}, RULES)
    assert "The claim holds" not in md and reason in md


def test_the_thresholds_are_params() -> None:
    docs = {"protomask": dict(GOOD, seeds=1), "protopnet": dict(BAD, seeds=1)}
    assert verdict(docs, RULES).holds is None
    assert verdict(docs, replace(RULES, verdict_min_seeds=1)).holds is True


def test_run_compare_writes_the_markdown_and_names_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="protopnet.json: missing"):
        (tmp_path / layout.evaluate_metrics("protomask")).parent.mkdir(parents=True)
        (tmp_path / layout.evaluate_metrics("protomask")).write_text(json.dumps(GOOD))
        run_compare(RULES, tmp_path)
    (tmp_path / layout.evaluate_metrics("protopnet")).write_text(json.dumps(BAD))
    assert run_compare(RULES, tmp_path).holds is True
    assert "The claim holds" in (tmp_path / layout.COMPARISON).read_text()
