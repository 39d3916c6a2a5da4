"""Exact push: global nearest own-class embedding, independent of batch size and order."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from model.backbones import build_backbone
from model.protomask import ProtoMask
from model.protopnet import ProtoPNet
from model.push import (
    PushCandidates,
    gather_across_ranks,
    merge_candidates,
    push_prototypes,
    reduce_candidates,
)

torch.set_num_threads(1)
K, PPC = 3, 2


def dataset(n: int = 13, m: int = 3, size: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    views = torch.randn(n, m, 3, size, size, generator=gen)
    labels = torch.tensor([i % K for i in range(n)])
    ids = torch.randperm(1000, generator=gen)[:n] + 100
    return views, labels, ids


def batches(
    x: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    size: int,
    shuffle_seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    order = list(range(len(x)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for s in range(0, len(order), size):
        idx = torch.tensor(order[s : s + size])
        yield x[idx], labels[idx], ids[idx]


def brute_force(
    cands: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, protos: torch.Tensor
) -> list[tuple[float, int, int]]:
    """Per prototype, min over every (image, candidate) of its class of (dist, id, index)."""
    best = []
    for p in range(len(protos)):
        keys = [
            (float(((cands[i, j].double() - protos[p].double()) ** 2).sum()), int(ids[i]), j)
            for i in range(len(cands))
            if labels[i] == p // PPC
            for j in range(cands.shape[1])
        ]
        best.append(min(keys) if keys else (float("inf"), -1, -1))
    return best


def make_protomask() -> ProtoMask:
    torch.manual_seed(0)
    return ProtoMask(
        build_backbone("tiny_cnn", "none"), K, prototypes_per_class=PPC, prototype_dim=4, seed=3
    )


def test_protomask_push_is_exact_for_any_batch_size_and_order() -> None:
    views, labels, ids = dataset()
    model = make_protomask()
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        emb = model.eval().embed(views)  # reference: all views in one call
    model.train()
    expected = brute_force(emb, labels, ids, model.head.prototypes.detach())
    results = []
    for size, shuffle in ((2, None), (5, None), (4, 1), (13, 2)):
        model.load_state_dict(start)
        res = push_prototypes(model, batches(views, labels, ids, size, shuffle))
        assert model.training  # mode restored
        results.append(res)
        assert res.grid == (3,)
        assert res.image_id.tolist() == [e[1] for e in expected]
        assert res.index.tolist() == [e[2] for e in expected]
        assert torch.allclose(
            res.distance, torch.tensor([e[0] for e in expected], dtype=torch.float64), atol=1e-6
        )
        rows = [int((ids == i).nonzero()) for i in res.image_id]
        assert torch.allclose(model.head.prototypes.detach(), emb[rows, res.index], atol=1e-6)
        assert torch.equal(res.vectors, model.head.prototypes.detach())
        # every prototype now comes from a view of its own class
        assert all(int(labels[r]) == p // PPC for p, r in enumerate(rows))
    for res in results[1:]:
        assert torch.equal(res.image_id, results[0].image_id)
        assert torch.equal(res.index, results[0].index)
    recs = results[0].records()
    assert recs[0].keys() == {"prototype", "image_id", "view", "distance"}
    assert recs[1]["view"] == int(results[0].index[1])


def test_push_keeps_prototypes_of_classes_without_data() -> None:
    views, labels, ids = dataset()
    keep = labels != 2
    model = make_protomask()
    before = model.head.prototypes.detach().clone()
    res = push_prototypes(model, batches(views[keep], labels[keep], ids[keep], 4))
    assert res.image_id[4:].tolist() == [-1, -1] and res.index[4:].tolist() == [-1, -1]
    assert torch.isinf(res.distance[4:]).all()
    assert torch.equal(model.head.prototypes.detach()[4:], before[4:])
    assert not torch.equal(model.head.prototypes.detach()[:4], before[:4])
    only_report = make_protomask()
    res2 = push_prototypes(only_report, batches(views, labels, ids, 4), update=False)
    assert torch.equal(only_report.head.prototypes.detach(), before)
    assert res2.image_id.min() >= 0


def test_protopnet_push_records_patch_locations() -> None:
    torch.manual_seed(0)
    model = ProtoPNet(
        build_backbone("tiny_cnn", "none"), K, prototypes_per_class=PPC, prototype_dim=4, seed=1
    ).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(7, 3, 12, 16, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    ids = torch.arange(7) * 10
    with torch.no_grad():
        cands, grid = model.push_candidates(images)
    assert grid == (3, 4)
    expected = brute_force(cands, labels, ids, model.head.prototypes.detach())
    for size, shuffle in ((3, 5), (7, None)):
        m2 = ProtoPNet(
            build_backbone("tiny_cnn", "none"), K, prototypes_per_class=PPC, prototype_dim=4, seed=1
        )
        m2.load_state_dict(model.state_dict())
        res = push_prototypes(m2, batches(images, labels, ids, size, shuffle))
        assert res.image_id.tolist() == [e[1] for e in expected]
        assert res.index.tolist() == [e[2] for e in expected]
        loc = res.location()
        assert torch.equal(loc[:, 0] * 4 + loc[:, 1], res.index)
        assert set(res.records()[0]) == {"prototype", "image_id", "h", "w", "distance"}
        # a pushed prototype sits exactly at distance ~0 from its source patch
        with torch.no_grad():
            out = m2.eval()(images)
        src = res.image_id // 10
        assert torch.allclose(out.min_distances[src, torch.arange(6)], torch.zeros(6), atol=1e-5)


# ------------------------------------------------------------------- the global reduction
def brute_reduce(parts: list[PushCandidates]) -> list[tuple[float, int, int]]:
    out = []
    for p in range(len(parts[0].distance)):
        keys = [(float(c.distance[p]), int(c.image_id[p]), int(c.index[p])) for c in parts]
        found = [k for k in keys if k[1] >= 0]
        out.append(min(found) if found else (float("inf"), -1, -1))
    return out


def fake_rank(gen: torch.Generator, p: int, d: int) -> PushCandidates:
    dist = torch.randint(0, 3, (p,), generator=gen).double()  # few values: many ties
    ids = torch.randint(0, 4, (p,), generator=gen)
    idx = torch.randint(0, 3, (p,), generator=gen)
    none = torch.rand(p, generator=gen) < 0.4
    dist[none], ids[none], idx[none] = float("inf"), -1, -1
    vec = torch.randn(p, d, generator=gen)
    return PushCandidates(dist, ids, idx, vec)


@pytest.mark.parametrize("seed", range(5))
def test_rank_reduction_is_the_global_lexicographic_min(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ranks = [fake_rank(gen, 60, 3) for _ in range(3)]
    merged = merge_candidates(ranks)
    expected = brute_reduce(ranks)
    assert merged.distance.tolist() == [e[0] for e in expected]
    assert merged.image_id.tolist() == [e[1] for e in expected]
    assert merged.index.tolist() == [e[2] for e in expected]
    for p, (d, i, x) in enumerate(expected):
        if i >= 0:  # the vector travels with its key
            src = next(
                r
                for r in ranks
                if (float(r.distance[p]), int(r.image_id[p]), int(r.index[p])) == (d, i, x)
            )
            assert torch.equal(merged.vectors[p], src.vectors[p])
        else:  # no candidate anywhere: the first part's (the current prototype's) vector
            assert torch.equal(merged.vectors[p], ranks[0].vectors[p])
    # any rank order gives the same answer
    again = merge_candidates(ranks[::-1])
    assert torch.equal(again.image_id, merged.image_id) and torch.equal(again.index, merged.index)
    assert gather_across_ranks(merged) is merged  # no process group: identity


def test_reduce_candidates_breaks_ties_by_image_then_index() -> None:
    proto = torch.tensor([0, 0, 0, 0, 1])
    dist = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    ids = torch.tensor([9, 4, 4, 1, 3])
    idx = torch.tensor([0, 2, 1, 0, 5])
    vec = torch.arange(5.0)[:, None]
    out = reduce_candidates(proto, dist, ids, idx, vec, 3)
    assert out.image_id.tolist() == [4, 3, -1] and out.index.tolist() == [1, 5, -1]
    assert out.vectors[:, 0].tolist()[:2] == [2.0, 4.0]
    assert out.distance[2] == float("inf")


# ------------------------------------------------------------------ two gloo ranks on CPU
def _ddp_push_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        views, labels, ids = dataset()
        shard = torch.arange(rank, len(views), world)  # as DistributedSampler would
        model = make_protomask()
        res = push_prototypes(model, batches(views[shard], labels[shard], ids[shard], 2))
        torch.save(
            {
                "image_id": res.image_id,
                "index": res.index,
                "grid": list(res.grid),
                "prototypes": model.head.prototypes.detach(),
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_push_under_two_gloo_ranks_equals_one_process(tmp_path) -> None:
    import time

    import torch.multiprocessing as mp

    views, labels, ids = dataset()
    single = make_protomask()
    expected = push_prototypes(single, batches(views, labels, ids, 5))
    # fork: no re-import (spawn costs ~10 s here); a deadline instead of a possible hang
    ctx = mp.start_processes(
        _ddp_push_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["image_id"], expected.image_id)
        assert torch.equal(got["index"], expected.index)
        assert got["grid"] == [3]
        assert torch.allclose(got["prototypes"], single.head.prototypes.detach(), atol=1e-6)
