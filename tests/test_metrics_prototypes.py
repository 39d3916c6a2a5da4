"""Top-k order, PD, consistency, stability, PSC / PRC / CRC and the keypoint rules by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import (
    Absent,
    consistency,
    consistency_per_prototype,
    crc,
    inter_pd,
    intra_pd,
    keypoint_index,
    parts_arrays,
    parts_in_masks,
    prc,
    psc,
    ranks_of,
    stability,
    top_k_indices,
)


def test_top_k_and_ranks_break_ties_by_lower_index() -> None:
    s = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    assert top_k_indices(s, 3).tolist() == [[1, 0, 2]]
    assert ranks_of(s, torch.tensor([[2, 0, 3, 1]])).tolist() == [[2, 1, 3, 0]]


def test_intra_pd() -> None:
    eye = np.eye(5)[None]  # orthogonal: every pair 1
    assert intra_pd(eye).tolist() == [1.0]
    assert intra_pd(np.ones((1, 5, 3)))[0] == pytest.approx(0.0)
    v = np.array([[[1.0, 0.0], [1.0, 1.0]]])  # 1 - 1/sqrt(2)
    assert intra_pd(torch.tensor(v))[0] == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(intra_pd(np.ones((1, 1, 3)))[0])


def test_inter_pd_orthogonal_and_by_hand() -> None:
    e = np.eye(4)
    vectors = np.stack([e[[0, 1]], e[[0, 1]], e[[2, 3]]])  # classes 0, 0, 1
    assert inter_pd(vectors, [0, 0, 1]) == pytest.approx(1.0)
    a, b = [1.0, 0.0], [0.0, 1.0]
    vectors = np.array([[a, a], [a, b], [b, b]])  # one image each of classes 0, 1, 2
    # class 0: (1,0) vs {a, b, b, b}: mean cos 1/4 -> 3/4; class 1: {a, b} vs {a, a, b, b}:
    # mean cos 1/2 -> 1/2; class 2: like class 0 -> 3/4. Mean 2/3.
    assert inter_pd(vectors, np.array([0, 1, 2])) == pytest.approx(2 / 3)
    assert isinstance(inter_pd(vectors, [4, 4, 4]), Absent)


def test_consistency_two_prototypes_three_parts() -> None:
    ids = np.array([[0, 1], [1, 0], [0, 1]])
    hits = np.zeros((3, 2, 3), bool)
    hits[0, 0] = [1, 1, 0]  # image 0, prototype 0: parts 0 and 1
    hits[1, 0] = [0, 0, 1]  # image 1, prototype 1 (first in its top-k): part 2
    hits[1, 1] = [1, 0, 0]  # image 1, prototype 0: part 0
    hits[2, 0] = [1, 0, 0]  # image 2, prototype 0: part 0
    # p0: n = 3, c = (3, 1, 0) -> (3/3 + 1/3) / 2 = 2/3; p1: n = 3, c = (0, 0, 1) -> 1/3
    assert consistency_per_prototype(ids, hits) == pytest.approx([200 / 3, 100 / 3])
    assert consistency(ids, hits) == pytest.approx(50.0)
    # an extra image whose top-2 (p2 new, p0) touch no part: p0 n = 4 -> (3/4 + 1/4) / 2,
    # p2 active with no part -> 0; inactive p3 is left out.
    ids4 = np.vstack([ids, [[2, 0]]])
    hits4 = np.concatenate([hits, np.zeros((1, 2, 3), bool)])
    per = consistency_per_prototype(ids4, hits4, num_prototypes=4)
    assert per[:3] == pytest.approx([50.0, 100 / 3, 0.0]) and math.isnan(per[3])
    assert consistency(ids4, hits4, 4) == pytest.approx((50 + 100 / 3 + 0) / 3)
    assert isinstance(consistency(ids, None), Absent)


def test_parts_in_masks_pixel_rule_and_invisible_parts() -> None:
    assert keypoint_index(np.array([[2.4, 1.5], [9.0, -3.0]]), 4, 5).tolist() == [2 * 5 + 2, 4]
    masks = np.zeros((1, 2, 4, 5), bool)
    masks[0, 0, :2, :3] = True  # top-left block
    masks[0, 1, 2:, 3:] = True  # bottom-right block
    xy = np.array([[[1.0, 1.0], [3.6, 2.5], [0.0, 0.0]]])  # (x, y); 3.6 -> col 4, 2.5 -> row 3
    vis = np.array([[True, True, False]])  # part 2 sits in mask 0 but is hidden
    hits = parts_in_masks(masks, xy, vis)
    assert hits.tolist() == [[[True, False, False], [False, True, False]]]


def test_parts_arrays_from_index_rows() -> None:
    rows = [
        [
            {"part_id": 2, "x": 3.0, "y": 4.0, "visible": True},
            {"part_id": 1, "x": 0.0, "y": 0.0, "visible": False},
        ],
        None,
    ]
    xy, vis, has = parts_arrays(rows, 3)
    assert xy[0, 1].tolist() == [3.0, 4.0]
    assert vis.tolist() == [[False, True, False], [False, False, False]]
    assert has.tolist() == [True, False]


def test_stability() -> None:
    a = np.array([[[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]]], bool)
    b = np.array([[[1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]]], bool)
    # union 3, sym. diff. 2 -> 100/3; empty union -> 100; identical -> 100; lost -> 0
    assert stability(a, b) == pytest.approx(np.array([[100 / 3, 100.0, 100.0, 0.0]]))
    ref = stability(a, b, empty_value=float("nan"))
    assert math.isnan(ref[0, 1])
    assert isinstance(stability(None, b), Absent)


def test_psc_prc_crc() -> None:
    s = np.array([[4.0, 2.0, 1.0]])
    s2 = np.array([[3.0, 2.0, 2.0]])
    assert psc(s, s2, k=2).tolist() == [[25.0, 0.0]]
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    sim2 = torch.tensor([[0.5, 0.8, 0.9, 0.1]])  # new order p2, p1, p0, p3
    assert prc(sim, sim2, k=2).tolist() == [[2.0, 0.0]]
    assert prc(sim, sim, k=4).tolist() == [[0.0] * 4]
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 1.0, 0.0]])
    logits2 = np.array([[1.0, 3.0, 2.0], [0.0, 5.0, 1.0], [0.0, 1.0, 0.0]])
    # image 0: class 0 falls to rank 2; image 1 unchanged; image 2: top-1 = class 0 (tie,
    # lower index), perturbed (0, 1, 0): class 1 first, class 0 second (before class 2)
    assert crc(logits, logits2).tolist() == [2.0, 0.0, 1.0]
