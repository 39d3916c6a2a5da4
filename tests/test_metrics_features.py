"""Intra / inter FD by hand, their edge cases, and the batch-by-batch gathering of evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.head import ProtoOutput
from model.map_stats import ActivationStats, candidate_features
from model.metrics import Absent, inter_fd, intra_fd, top_k_features
from model.pipnet import PresenceOutput

# three candidates (views or locations) of one image, D = 2
F = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])


def test_top_k_features_take_each_top_prototypes_best_match() -> None:
    matched = np.array([[2, 0, 1]])  # prototype p matched candidate matched[p]
    got = top_k_features(F, matched, np.array([[1, 0]]))
    assert got.tolist() == [[[1.0, 0.0], [1.0, 1.0]]]
    with pytest.raises(ValueError, match="outside 0..2"):
        top_k_features(F, np.array([[3, 0, 1]]), np.array([[0]]))


def test_intra_fd_by_hand_and_edges() -> None:
    # top-3 prototypes match candidates 0, 1, 0: vectors a, b, a with a . b = 0
    # ordered pairs (a,b) (b,a) (a,a) (a,a) (b,a) (a,b): distances 1 1 0 0 1 1 -> 4 / 6
    matched = np.array([[0, 1, 0]])
    assert intra_fd(F, matched, np.array([[0, 1, 2]]))[0] == pytest.approx(2 / 3)
    # every top prototype matches the same candidate: no diversity at all
    assert intra_fd(F, np.array([[2, 2, 2]]), np.array([[0, 1, 2]]))[0] == pytest.approx(0.0)
    assert math.isnan(intra_fd(F, matched, np.array([[1]]))[0])  # K = 1: no pair


def test_inter_fd_by_hand_and_one_class() -> None:
    # image 0 (class 0): both top prototypes at (1, 0); image 1 (class 1): (0, 1) and (1, 0).
    features = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    matched = np.array([[0, 1], [0, 1]])
    ids = np.array([[0, 1], [0, 1]])
    # every pair across the classes: cos 0, 1, 0, 1 -> mean 1/2; both classes 1 - 1/2
    assert inter_fd(features, matched, ids, [0, 1]) == pytest.approx(0.5)
    one = inter_fd(features, matched, ids, [3, 3])
    assert isinstance(one, Absent) and "inter FD" in one.reason


def test_candidate_features_follow_matched_indexing() -> None:
    b, d, h, w = 1, 2, 2, 3
    fmap = torch.arange(b * d * h * w, dtype=torch.float32).reshape(b, d, h, w)
    out = ProtoOutput(torch.zeros(b, 2), torch.zeros(b, 1), torch.zeros(b, 1), fmap, fmap)
    flat = candidate_features(out)
    assert flat.shape == (b, h * w, d)
    assert flat[0, 1 * w + 2].tolist() == fmap[0, :, 1, 2].tolist()  # location h * W + w
    views = torch.rand(b, 4, d)
    assert candidate_features(out._replace(embeddings=views)) is views
    assert candidate_features(out._replace(embeddings=None)) is None
    maps = torch.rand(b, 5, h, w)  # PIP-Net: the presence vector at each location
    presence = PresenceOutput(torch.zeros(b, 2), torch.zeros(b, 5), torch.zeros(b, 5), maps)
    assert candidate_features(presence)[0, 4].tolist() == maps[0, :, 1, 1].tolist()


def test_batches_and_shares_give_the_whole_split_values() -> None:
    gen = torch.Generator().manual_seed(0)
    n, p, k, m, d = 9, 6, 3, 4, 5
    views = torch.rand(n, m, d, generator=gen)
    matched = torch.randint(0, m, (n, p), generator=gen)
    ids = torch.stack([torch.randperm(p, generator=gen)[:k] for _ in range(n)])
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    out = ProtoOutput(torch.zeros(n, 3), torch.zeros(n, p), matched, torch.zeros(n, p, m), views)
    first, second = ActivationStats(), ActivationStats()
    for stats, rows in ((first, slice(0, 4)), (first, slice(4, 6)), (second, slice(6, 9))):
        part = out._replace(matched=matched[rows], embeddings=views[rows])
        stats.add_features(part, ids[rows], labels[rows])
    first.merge(second)
    got = first.results()
    assert got["intra_fd"] == pytest.approx(float(intra_fd(views, matched, ids).mean()))
    assert got["inter_fd"] == pytest.approx(inter_fd(views, matched, ids, labels))
    empty = ActivationStats().results()  # a forward without feature vectors
    assert isinstance(empty["intra_fd"], Absent) and isinstance(empty["inter_fd"], Absent)
