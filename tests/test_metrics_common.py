"""The Absent / NaN value convention of model.metrics."""

from __future__ import annotations

import math

import numpy as np
import torch

from model.metrics import Absent, mean_of, to_jsonable


def test_mean_of_skips_absent_and_nan() -> None:
    assert mean_of([1.0, np.array([2.0, np.nan]), Absent("no G"), torch.tensor([3.0])]) == 2.0


def test_mean_of_all_absent_is_absent_with_the_reasons() -> None:
    result = mean_of([Absent("a"), Absent("b"), Absent("a")])
    assert result == Absent("a; b")


def test_mean_of_nothing_defined_is_absent_not_zero() -> None:
    assert mean_of([np.array([np.nan, np.nan])], empty_reason="empty S") == Absent("empty S")
    assert mean_of([]) == Absent("undefined for every item")
    assert mean_of(Absent("no keypoints")) == Absent("no keypoints")


def test_json() -> None:
    assert to_jsonable(Absent("no G")) == {"absent": "no G"}
    assert to_jsonable(2.5) == 2.5 and to_jsonable(math.nan) is None
