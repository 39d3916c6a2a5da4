"""compare: metrics over seeds, paired differences with 95 % intervals, the claims decided
from the intervals, and no verdict on thin evidence."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from model.comparison import compare_document, comparison_markdown, run_compare, verdict
from model.metric_layout import grouped
from model.seed_stats import decide, paired_difference, spread
from pipeline import layout
from pipeline.errors import ArtifactError, ParamsError
from pipeline.params import EvaluateParams, Params, TrainParams

RULES = EvaluateParams()
ENOUGH = {"test_images": 120, "test_classes": 5, "fallback_share": 0.0}  # chance: 20 %


def doc(bg: float, obj: float, cons: float, acc: float, **extra: object) -> dict:
    """A metrics document in evaluate's layout (model/metric_layout.py)."""
    return grouped(
        dict(
            ENOUGH,
            background_overlap=bg,
            object_overlap=obj,
            consistency=cons,
            balanced_accuracy=acc,
            randomisation={"passed": True, "spearman": 0.1},
            **extra,
        )
    )


def update(document: dict, flat: dict) -> None:
    """Set metrics of ``document`` by name, each in its group."""
    for key, value in grouped(flat).items():
        if isinstance(value, dict):
            document.setdefault(key, {}).update(value)
        else:
            document[key] = value


def good_vs_bad(seeds: int = 3) -> dict:
    """ProtoMask better on every claim, by margins far above the seed noise."""
    return {
        "protomask": {s: doc(10.0 + s, 50.0 - s, 40.0, 80.0 + s) for s in range(seeds)},
        "protopnet": {s: doc(30.0 + 0.5 * s, 20.0, 10.0 + s, 79.0) for s in range(seeds)},
    }


def test_the_paired_interval_is_the_student_t_interval_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 2.484138
    diff = paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 9: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert diff.n == 3 and diff.mean == 2.0
    assert math.isclose(diff.low, 2.0 - 2.484138, abs_tol=1e-6)
    assert math.isclose(diff.high, 2.0 + 2.484138, abs_tol=1e-6)
    one = paired_difference({0: 5.0}, {0: 3.0})
    assert one.mean == 2.0 and one.low is None and decide(one, "higher") == "undecided"
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
    assert spread([0.1, 0.1, 0.1]).std == 0.0 and spread([4.0]).std is None
    assert spread([]) is None


@pytest.mark.parametrize(
    "low, high, want, outcome",
    [
        (-3.0, -1.0, "lower", "holds"),
        (1.0, 3.0, "lower", "does not hold"),
        (-1.0, 1.0, "lower", "undecided"),
        (1.0, 3.0, "higher", "holds"),
        (-3.0, -1.0, "higher", "does not hold"),
        (-1.5, 4.0, "competitive", "holds"),  # margin 2: at most 2 points worse
        (-5.0, -2.5, "competitive", "does not hold"),
        (-3.0, 1.0, "competitive", "undecided"),
    ],
)
def test_a_claim_is_decided_by_where_the_interval_lies(low, high, want, outcome) -> None:
    from model.seed_stats import Difference

    assert decide(Difference((low + high) / 2, low, high, 3), want, margin=2.0) == outcome


def test_the_claims_are_decided_from_the_intervals() -> None:
    runs = good_vs_bad()
    result = verdict(runs, RULES)
    assert result.holds is True and result.sentence.startswith("The claims hold")
    flipped = {"protomask": runs["protopnet"], "protopnet": runs["protomask"]}
    result = verdict(flipped, RULES)
    assert result.holds is False and "background overlap lower: does not hold" in result.sentence
    noisy = good_vs_bad()
    for s, d in noisy["protomask"].items():
        d["consistency"] = 10.0 + (s - 1) * 30.0  # -20, +10, +40 against ~11: straddles 0
    result = verdict(noisy, RULES)
    assert result.holds is None and "consistency higher: undecided" in result.sentence


def test_an_absent_metric_is_said_not_measured() -> None:
    runs = good_vs_bad()
    for d in runs["protomask"].values():
        d["consistency"] = {"absent": "no ground-truth part keypoints"}
    result = verdict(runs, RULES)
    assert result.holds is None and "consistency higher: not measured" in result.sentence
    assert "absent (no ground-truth part keypoints)" in comparison_markdown(runs, RULES)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"test_images": 2}, "evaluate.verdict_min_test_images"),
        ({"fallback_share": 100.0}, "evaluate.verdict_max_fallback_share"),
        ({"abstained": 80.0}, "evaluate.verdict_max_abstained"),
    ],
)
def test_thin_evidence_gives_no_verdict_and_says_why(change: dict, reason: str) -> None:
    runs = good_vs_bad()
    for d in runs["protomask"].values():
        update(d, change)
    result = verdict(runs, RULES)
    assert result.holds is None and reason in result.reason
    assert (
        result.sentence.startswith("No verdict on the claims")
        and "not a finding" in result.sentence
    )
    md = comparison_markdown(runs, RULES)
    assert "The claims hold" not in md and reason in md
    above_table = md.split("| baseline | metric | claim |")[0].split("paired by seed)")[-1]
    assert reason in above_table and "an observation, not a finding" in above_table
    assert compare_document(runs, RULES)["verdict"] == "no verdict"
    decided = comparison_markdown(good_vs_bad(), RULES)
    assert "not a finding" not in decided


@pytest.mark.parametrize("model", ["protomask", "protopnet"])
def test_a_model_whose_accuracy_interval_reaches_chance_gives_no_verdict(model: str) -> None:
    runs = good_vs_bad()  # five test classes: chance 20 %
    for s, d in runs[model].items():
        update(d, {"balanced_accuracy": (22.0, 30.0, 26.0)[s]})  # 26 +- 4: 16.1 to 35.9
    result = verdict(runs, RULES)
    assert result.holds is None and f"{model}'s balanced accuracy (26.0 %" in result.reason
    assert "95 % interval 16.1 to 35.9 over 3 seeds" in result.reason
    assert "chance (20.0 %, 5 test classes)" in result.reason
    for s, d in runs[model].items():  # 31 +- 1: 28.5 to 33.5, above chance
        update(d, {"balanced_accuracy": (30.0, 32.0, 31.0)[s]})
    assert "chance" not in verdict(runs, RULES).reason
    for s, d in runs[model].items():  # ten classes: chance 10 %, 10.5 to 15.5 above it
        update(d, {"balanced_accuracy": 12.0 + s, "test_classes": 10})
    assert "chance" not in verdict(runs, RULES).reason
    other = "protopnet" if model == "protomask" else "protomask"
    for d in runs[other].values():  # every model at chance is named
        update(d, {"balanced_accuracy": 10.0, "test_classes": 10})
    for s, d in runs[model].items():
        update(d, {"balanced_accuracy": (22.0, 30.0, 26.0)[s], "test_classes": 5})
    both = verdict(runs, RULES).reason
    assert f"{model}'s balanced accuracy (26.0 %" in both
    assert f"{other}'s balanced accuracy (10.0 %, 95 % interval 10.0 to 10.0" in both


def test_one_model_alone_gives_no_verdict() -> None:
    runs = {"protomask": good_vs_bad()["protomask"]}
    assert verdict(runs, RULES).reason == "only one model was evaluated"
    assert compare_document(runs, RULES)["verdict"] == "no verdict"


def test_metrics_without_the_test_classes_give_no_verdict() -> None:
    runs = good_vs_bad()
    for d in runs["protopnet"].values():
        del d["run"]["test_classes"]
    result = verdict(runs, RULES)
    assert result.holds is None and "protopnet's metrics lack run.test_classes" in result.reason


def test_one_seed_gives_no_verdict_and_the_thresholds_are_params() -> None:
    runs = good_vs_bad(seeds=1)
    result = verdict(runs, RULES)
    assert result.holds is None and "evaluate.verdict_min_seeds" in result.reason
    assert "no interval" in result.sentence
    two = good_vs_bad(seeds=2)
    assert "evaluate.verdict_min_seeds" in verdict(two, RULES).reason
    allowed = verdict(two, replace(RULES, verdict_min_seeds=2))  # decided by the intervals:
    assert "background overlap lower: holds" in allowed.sentence  # t(0.975, 1) = 12.7
    assert "balanced accuracy competitive: undecided" in allowed.sentence and allowed.holds is None


def test_the_table_shows_mean_and_std_and_yes_no_counts() -> None:
    md = comparison_markdown(good_vs_bad(), RULES)
    assert "| background overlap (%) | 11.00 ± 1.00 | 30.50 ± 0.50 | lower |" in md
    assert "| randomisation check passed | 3 of 3 | 3 of 3 |  |" in md
    assert "| protopnet | background_overlap | lower | -19.50 |" in md
    single = comparison_markdown(good_vs_bad(seeds=1), RULES)
    assert "| background overlap (%) | 10 | 30 | lower |" in single
    assert "none (one seed)" in single


def test_the_differences_say_their_intervals_are_not_corrected_for_their_number() -> None:
    md = comparison_markdown(good_vs_bad(), RULES)  # one baseline: four claims
    assert "not corrected for the 4 read together" in md and "about 0.2 of them" in md
    assert "not corrected" not in comparison_markdown(good_vs_bad(seeds=1), RULES)  # none


def test_the_document_has_every_model_difference_and_claim() -> None:
    out = compare_document(good_vs_bad(), RULES)
    assert out["seeds"] == {"protomask": [0, 1, 2], "protopnet": [0, 1, 2]}
    assert out["models"]["protopnet"]["background_overlap"] == {"mean": 30.5, "std": 0.5, "n": 3}
    assert out["models"]["protopnet"]["randomisation"]["spearman"]["mean"] == pytest.approx(0.1)
    assert out["models"]["protopnet"]["segmenter"]["fallback_share"]["mean"] == 0.0  # grouped
    diff = out["differences"]["protopnet"]["balanced_accuracy"]
    assert diff["mean"] == 2.0 and diff["ci95_low"] < 0 < diff["ci95_high"]
    assert out["claims"]["protopnet"]["balanced_accuracy competitive"] == "holds"
    assert out["verdict"] == "holds" and json.dumps(out, allow_nan=False)


def test_run_compare_reads_every_seed_and_names_a_missing_one(tmp_path: Path) -> None:
    params = replace(Params(), train=replace(TrainParams(), seeds=[0, 1, 2]))
    runs = good_vs_bad()
    runs.update({"protopool": runs["protopnet"], "pipnet": runs["protopnet"]})
    assert set(runs) == set(layout.MODELS)
    for model, seeds in runs.items():
        for seed, values in seeds.items():
            if (model, seed) == ("protopnet", 2):
                continue
            path = tmp_path / layout.evaluate_metrics(model, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
    with pytest.raises(ArtifactError, match=r"protopnet/seed-2.json: missing.*--seed 2"):
        run_compare(params, tmp_path)
    path = tmp_path / layout.evaluate_metrics("protopnet", 2)
    path.write_text(json.dumps(good_vs_bad()["protopnet"][2]))
    assert run_compare(params, tmp_path).holds is True
    text = (tmp_path / layout.COMPARISON).read_text()
    assert (
        "The claims hold" in text
        and "| metric | protomask | protopnet | protopool | pipnet |" in text
    )
    document = json.loads((tmp_path / layout.COMPARISON_JSON).read_text())
    assert document["verdict"] == "holds"
    assert set(document["claims"]) == {"protopnet", "protopool", "pipnet"}
    claims = sum(len(c) for c in document["claims"].values())
    short = json.loads((tmp_path / layout.COMPARE_METRICS).read_text())
    assert short == {
        "verdict": "holds",
        "seeds": 3,
        "claims": {"holds": claims, "does_not_hold": 0, "undecided": 0, "not_measured": 0},
    }


def test_train_seeds_must_be_distinct_in_range_and_listed() -> None:
    from pipeline.param_loading import build_section

    assert build_section(TrainParams, {"seeds": [3, 1]}, "train.").seeds == [3, 1]
    for raw, message in (
        ([], "non-empty list"),
        ([1, 1], "lists a value twice"),
        ([-1], r"train.seeds\[0\] must be in"),
        (["a"], r"train.seeds\[0\] must be of type int"),
        (7, "non-empty list"),
    ):
        with pytest.raises(ParamsError, match=message):
            build_section(TrainParams, {"seeds": raw}, "train.")


def test_readme_states_the_metrics_file_layout() -> None:
    from model.metric_layout import GROUPS, HEADLINE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    keys = lambda names: ", ".join(f"`{k}`" for k in names)  # noqa: E731
    assert f"| (top level) | {keys(HEADLINE)} |" in readme
    for group, names in GROUPS.items():
        if names:
            assert f"| `{group}` | {keys(names)}" in readme, group
