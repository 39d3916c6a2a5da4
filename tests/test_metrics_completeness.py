"""Output completeness: the noise outside a box, the explanation box and the seven changes
on hand-computed inputs, and their edge cases (a box over the whole input: no noise)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.evaluation import run_evaluation
from model.map_stats import COMPLETENESS_KEYS, CompletenessStats
from model.metric_layout import value_of
from model.metrics.common import Absent
from model.metrics.completeness import (
    COMPLETENESS_NAMES,
    completeness_changes,
    explanation_box,
)
from pipeline.params import EvaluateParams
from pipeline.perturbation import completeness_rng, noise_outside_box, pixels_in_box
from tests.tiny_project import copy_project, tiny_trained_params


def test_pixels_in_box_of_an_unresized_view_are_the_box_itself() -> None:
    inside = pixels_in_box((1, 2, 3, 2), (0, 0, 4, 3), 4, 5)
    expected = np.zeros((4, 5), bool)
    expected[2, 1:4] = True
    assert (inside == expected).all()


def test_pixels_in_box_of_a_shrunk_view() -> None:
    # the view shows image columns 0..7 at 4 pixels: centres at x = 0.5, 2.5, 4.5, 6.5
    inside = pixels_in_box((2, 0, 5, 0), (0, 0, 7, 0), 1, 4)
    assert inside.tolist() == [[False, True, True, False]]  # 2.5 and 4.5 lie in [1.5, 5.5)
    assert not pixels_in_box((20, 20, 30, 30), (0, 0, 7, 7), 4, 4).any()  # box off the view


def test_noise_is_zero_inside_the_box_and_seeded_by_image_and_rank() -> None:
    views = np.array([[0, 0, 5, 3]])
    noise = noise_outside_box((1, 3, 4, 6), views, (2, 1, 3, 2), 0.05, completeness_rng(0, 7, 1))
    assert noise.dtype == np.float32 and noise.shape == (1, 3, 4, 6)
    assert (noise[0, :, 1:3, 2:4] == 0).all() and (noise[0, :, 0] != 0).all()
    again = noise_outside_box((1, 3, 4, 6), views, (2, 1, 3, 2), 0.05, completeness_rng(0, 7, 1))
    other = noise_outside_box((1, 3, 4, 6), views, (2, 1, 3, 2), 0.05, completeness_rng(0, 7, 2))
    assert (noise == again).all() and not (noise == other).all()
    whole = noise_outside_box((1, 3, 4, 6), views, (0, 0, 5, 3), 0.05, completeness_rng(0, 7, 1))
    assert not whole.any()  # the box covers the whole input: no noise
    everywhere = noise_outside_box((1, 3, 4, 6), views, None, 0.05, completeness_rng(0, 7, 1))
    assert (everywhere != 0).all()


def test_explanation_box_is_the_inclusive_bounding_box() -> None:
    s = torch.zeros(5, 6, dtype=torch.bool)
    s[1, 4] = s[3, 2] = True
    assert explanation_box(s) == (2, 1, 4, 3)
    assert explanation_box(torch.zeros(5, 6, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        explanation_box(torch.zeros(2, 5, 6, dtype=torch.bool))


def changes_of(sal, sal_n, act, act_n, scores, scores_n, ids, fraction=0.25):
    return completeness_changes(
        torch.tensor(sal, dtype=torch.float32)[None],
        torch.tensor(sal_n, dtype=torch.float32)[None],
        torch.tensor(act, dtype=torch.float64)[None],
        torch.tensor(act_n, dtype=torch.float64)[None],
        torch.tensor(scores)[None],
        torch.tensor(scores_n)[None],
        torch.tensor([ids]),
        fraction,
    )


def test_changes_by_hand() -> None:
    # 2 x 2 maps, top 25 % = one pixel. S = {(0, 0)} with R = 4; S~ = {(0, 1)} with R~ = 2.
    # activation A = [[1, 0], [0, 0]] -> A~ = [[0, 0], [0, 3]]: maxima (0, 0) -> (1, 1).
    # scores of prototypes (2, 1, 0.5): p = 0 drops to 1.5, below p = 1 (rank 0 -> 1).
    out = changes_of(
        [[4.0, 1.0], [0.0, 0.0]],
        [[0.0, 2.0], [1.0, 0.0]],
        [[1.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.0, 3.0]],
        [2.0, 1.0, 0.5],
        [1.5, 1.6, 0.5],
        0,
    )
    assert list(out) == list(COMPLETENESS_NAMES)
    assert out["vlc"][0] == pytest.approx(100.0)  # disjoint S: 1 - IoU = 1
    assert out["vlc_sbox"][0] == pytest.approx(100.0)  # one-pixel boxes, disjoint too
    # sorted R (4, 0, 0, 0) vs (2, 0, 0, 0): 1 - 2 / 4
    assert out["vac"][0] == pytest.approx(50.0)
    assert out["plc"][0] == 2.0  # |1 - 0| + |1 - 0|
    assert out["psc"][0] == pytest.approx(25.0)  # |1.5 - 2| / 2
    assert out["prc"][0] == 1.0
    assert out["palc"][0] == pytest.approx(100.0)  # masks {(0, 0)} vs {(1, 1)}
    assert out["pac"][0] == pytest.approx(100.0 * (1 - 1 / 3))  # sorted 1 vs 3


def test_the_box_form_compares_the_boxes_of_s() -> None:
    # 3 x 3, top 2 of 9 pixels (fraction 0.25 -> 2): S = {(0, 0), (0, 2)}, box = row 0 (3 px);
    # S~ = {(0, 0), (1, 0)}, box = column 0 rows 0-1 (2 px): masks share 1 of 3 pixels,
    # boxes share 1 of 4: VLC 100 (1 - 1/3), VLC_sbox 100 (1 - 1/4)
    sal = [[5.0, 0.0, 4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    sal_n = [[5.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    act = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    out = changes_of(sal, sal_n, act, act, [1.0], [1.0], 0, fraction=2 / 9)
    assert out["vlc"][0] == pytest.approx(100 * (1 - 1 / 3))
    assert out["vlc_sbox"][0] == pytest.approx(75.0)


def test_unchanged_input_gives_zero_change_and_a_zero_score_is_undefined() -> None:
    sal = [[0.0, 3.0], [1.0, 2.0]]
    act = [[0.5, 0.25], [0.0, 1.0]]
    out = changes_of(sal, sal, act, act, [0.0, 1.0], [0.0, 1.0], 0)
    for name in ("vlc", "vlc_sbox", "vac", "plc", "prc", "palc", "pac"):
        assert out[name][0] == 0.0, name
    assert math.isnan(out["psc"][0])  # |s~ - s| / s with s = 0


def test_stats_average_items_and_say_when_off() -> None:
    on = CompletenessStats()
    on.add({name: np.array([1.0, np.nan]) for name in COMPLETENESS_NAMES})
    later = CompletenessStats()
    later.add({name: np.array([3.0]) for name in COMPLETENESS_NAMES})
    on.merge(later)
    assert on.results() == {key: 2.0 for key in COMPLETENESS_KEYS}
    off = CompletenessStats(enabled=False).results()
    assert all(isinstance(v, Absent) and "output_completeness" in v.reason for v in off.values())


@pytest.mark.parametrize("kind", ["protomask", "protopnet"])
def test_evaluate_without_noise_changes_nothing(
    trained_project: Path, tmp_path: Path, kind: str
) -> None:
    """With noise std 0 the noised input is the clean one: every change is 0 (the r-th
    prototype's view, map and score are matched up right)."""
    ev = EvaluateParams(
        device="cpu",
        batch_size=2,
        max_images=2,
        sanity_images=0,
        report_prototypes=0,
        report_images=0,
        loader_workers=0,
        completeness_top_k=2,
    )
    params = replace(tiny_trained_params(), evaluate=replace(ev, completeness_noise_std=0.0))
    project = copy_project(trained_project, tmp_path / "p")
    doc = run_evaluation(params, kind, project, write=False).metrics
    assert {key: value_of(doc, key) for key in COMPLETENESS_KEYS} == dict.fromkeys(
        COMPLETENESS_KEYS, 0.0
    )
