"""ProtoPool: shapes, gradients, Gumbel schedule, hard assignment, push, loss, and the
numbers of the original code (tests/data/protopool_reference.json, made by
benchmarks/crosscheck/protopool_reference.py from gmum/ProtoPool)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.backbones import build_backbone
from model.head import ProtoOutput
from model.losses import l1_wrong_class
from model.protopool import (
    ProtoPool,
    ProtoPoolHead,
    gumbel_scale,
    gumbel_temperature,
    log_similarity,
)
from model.protopool_losses import (
    ProtoPoolLossWeights,
    cluster_cost,
    orthogonality_loss,
    protopool_loss,
    separation_cost,
)
from model.push import push_prototypes

torch.set_num_threads(1)
REFERENCE = json.loads((Path(__file__).parent / "data" / "protopool_reference.json").read_text())
K, S, P, D = 3, 2, 7, 6
ASSIGNMENT = [[0, 1], [1, 2], [3, 3]]  # class -> its slots' prototypes


def tiny_protopool(**kw) -> ProtoPool:
    torch.manual_seed(0)
    kw = {"num_prototypes": P, "num_slots": S, "prototype_dim": D, **kw}
    return ProtoPool(build_backbone("tiny_cnn", "none"), K, **kw)


def images(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def set_assignment(model: ProtoPool, assignment: list[list[int]]) -> None:
    with torch.no_grad():
        model.head.slots.fill_(0.0)
        for k, row in enumerate(assignment):
            for s, p in enumerate(row):
                model.head.slots[k, s, p] = 1.0


# --------------------------------------------------------------------------- network
def test_forward_shapes_and_groups() -> None:
    model = tiny_protopool().eval()
    out = model(images(), return_embeddings=True)
    assert isinstance(out, ProtoOutput)
    assert out.logits.shape == (2, K) and out.min_distances.shape == (2, P)
    assert out.distances.shape == (2, P, 4, 4) and out.embeddings.shape == (2, D, 4, 4)
    flat = out.distances.flatten(2)
    assert torch.equal(out.min_distances, flat.gather(2, out.matched[..., None])[..., 0])
    assert model.head.num_prototypes == P and model.head.slots.shape == (K, S, P)
    groups = model.parameter_groups()
    assert list(groups) == ["trunk", "add_on", "prototypes", "slots", "last_layer"]
    n_params = sum(p.numel() for ps in groups.values() for p in ps)
    assert n_params == sum(p.numel() for p in model.parameters())
    # last layer: +1 from a slot to its class, the original's 0 elsewhere
    w = model.head.last_layer.weight
    assert w.shape == (K, K * S) and torch.equal(w, model.head.prototype_class_identity.t())
    cands, grid = model.push_candidates(images())
    assert cands.shape == (2, 16, D) and grid == (4, 4)


def test_gradients_reach_every_group() -> None:
    model = tiny_protopool().train()
    out = model(images(4), gumbel_scale=3.0)
    total, _ = protopool_loss(out, torch.tensor([0, 1, 2, 1]), model)
    total.backward()
    for name, params in model.parameter_groups().items():
        grad = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert grad > 0, name


def test_gumbel_schedule() -> None:
    ref = REFERENCE["gumbel_schedule"]
    ours = [gumbel_scale(e, interval=ref["gumbel_time"]) for e in range(len(ref["values"]))]
    assert ours == pytest.approx(ref["values"], rel=1e-12)
    assert gumbel_scale(0) == 0 and gumbel_scale(30) == 1000 and gumbel_scale(99) == 1000
    assert gumbel_scale(15) == pytest.approx(1000 * math.sqrt(0.5))
    # quanproto: from 1 / tau_start = 1 to 1 / tau_end = 1000 over 50 epochs, floored at 1
    assert gumbel_scale(0, interval=50, start=1.0, end=1000.0, floor=True) == 1.0
    assert gumbel_temperature(0) == math.inf
    assert gumbel_temperature(30) == pytest.approx(0.5 / 1000)


def test_presence_soft_in_training_hard_at_eval() -> None:
    model = tiny_protopool()
    x = images()
    model.train()
    model(x)  # scale 0: softmax over the pool
    soft = model.head.last_presence
    assert torch.allclose(soft, torch.softmax(model.head.slots, dim=-1))
    model(x, gumbel_scale=50.0)
    assert model.head.last_presence.requires_grad
    assert torch.allclose(model.head.last_presence.sum(-1), torch.ones(K, S))
    model.eval()
    out = model(x)
    hard = model.head.last_presence
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard.argmax(-1), model.head.slots.argmax(-1))
    assert torch.equal(out.logits, model(x).logits)  # deterministic
    # hard assignment: logits = effective per-prototype weights x focal similarities
    sim = log_similarity(out.min_distances) - log_similarity(out.distances.flatten(2).mean(2))
    expected = sim @ model.head.prototype_weights().t()
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_class_table_follows_hard_assignment() -> None:
    model = tiny_protopool()
    set_assignment(model, ASSIGNMENT)
    assert model.head.assignment().tolist() == ASSIGNMENT
    assert model.head.class_prototype_table().tolist() == [[0, 1], [1, 2], [3, -1]]
    assert model.prototype_classes() == [[0], [0, 1], [1], [2], [], [], []]
    assert model.head.prototype_classes.tolist() == [0, 0, 1, 2, -1, -1, -1]


def test_push_puts_prototypes_on_assigned_class_candidates() -> None:
    model = tiny_protopool()
    set_assignment(model, ASSIGNMENT)
    before = model.head.prototypes.detach().clone()
    x, labels = images(6, seed=3), torch.tensor([0, 1, 2, 0, 1, 2])
    ids = torch.arange(6) + 10
    batches = [(x[s : s + 4], labels[s : s + 4], ids[s : s + 4]) for s in (0, 4)]
    result = push_prototypes(model, batches)
    with torch.no_grad():
        cands, _ = model.eval().push_candidates(x)  # (N, h*w, D)
    protos = model.head.prototypes.detach()
    for p, classes in enumerate(model.prototype_classes()):
        if not classes:
            assert int(result.image_id[p]) == -1 and torch.equal(protos[p], before[p])
            continue
        rows = [i for i in range(6) if int(labels[i]) in classes]
        d = ((cands[rows].double() - before[p].double()) ** 2).sum(-1)  # (n, h*w)
        row, loc = divmod(int(d.argmin()), d.shape[1])
        assert int(result.image_id[p]) == int(ids[rows[row]]) and int(result.index[p]) == loc
        assert torch.allclose(protos[p], cands[rows[row], loc])
        assert int(labels[rows[row]]) in classes


# ------------------------------------------------------------------------------ loss
def test_loss_parts_and_periods() -> None:
    model = tiny_protopool().train()
    labels = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="presence"):
        protopool_loss(ProtoOutput(*(torch.zeros(1),) * 4), labels, tiny_protopool())
    out = model(images(), gumbel_scale=10.0)
    w = ProtoPoolLossWeights()
    total, parts = protopool_loss(out, labels, model, w)
    assert list(parts) == ["total", "cross_entropy", "cluster", "separation", "orthogonality", "l1"]
    combined = (
        parts["cross_entropy"]
        + 0.8 * parts["cluster"]
        - 0.08 * parts["separation"]
        + parts["orthogonality"]
        + 1e-4 * parts["l1"]
    )
    assert parts["total"] == pytest.approx(combined, rel=1e-5)
    assert parts["l1"] == 0.0  # off-class weights start at 0
    assert w.for_period("joint").l1 == 0.0
    ll = w.for_period("last_layer")
    assert (ll.cluster, ll.separation, ll.orthogonality, ll.l1) == (0.0, 0.0, 0.0, 1e-4)
    with pytest.raises(ValueError):
        w.for_period("push")
    slots = model.head.slots.detach()
    adjacent = torch.nn.functional.cosine_similarity(slots[:, 0], slots[:, 1], dim=1).sum()
    assert float(orthogonality_loss(slots, "adjacent")) == pytest.approx(float(adjacent) / (K * S))


# ------------------------------------------------------------- against the original
def reference_head() -> tuple[ProtoPoolHead, torch.Tensor]:
    shapes, inputs = REFERENCE["shapes"], REFERENCE["inputs"]
    k, s, p, d = shapes["K"], shapes["S"], shapes["P"], shapes["D"]
    head = ProtoPoolHead(k, s, p, d)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor(inputs["prototypes"]))
        head.slots.copy_(torch.tensor(inputs["presence_kps"]).transpose(1, 2))
        head.last_layer.weight.copy_(torch.tensor(inputs["last_layer"]))
    head.requires_grad_(False)
    f = torch.tensor(inputs["features"])
    return head, head.distances(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def close(ours: torch.Tensor, ref: list, atol: float = 1e-6) -> None:
    ref_t = torch.tensor(ref, dtype=ours.dtype)
    assert torch.allclose(ours, ref_t, rtol=1e-5, atol=atol), float((ours - ref_t).abs().max())


@pytest.mark.parametrize("case", ["softmax", "gumbel", "hard"])
def test_forward_and_losses_match_original(case: str) -> None:
    head, dist = reference_head()
    close(dist, REFERENCE["distances"], atol=1e-5)
    ref = REFERENCE["forward"][case]
    flat = dist.flatten(2)
    min_d = flat.amin(2)
    close(min_d, ref["min_distances"], atol=1e-5)
    if case == "hard":
        presence = head.presence(hard=True)
    else:
        torch.manual_seed(ref["seed"] if ref["seed"] is not None else 0)
        presence = head.presence(ref["scale"])
    close(presence.transpose(1, 2), ref["presence_kps"])
    with torch.no_grad():
        close(head.classify(min_d, flat.mean(2), presence), ref["logits"], atol=1e-5)
    labels = torch.tensor(REFERENCE["labels"])
    losses = REFERENCE["losses"][case]
    assert float(cluster_cost(min_d, labels, presence, head.dim)) == pytest.approx(
        losses["cluster"], rel=1e-5
    )
    assert float(separation_cost(min_d, labels, presence, head.dim)) == pytest.approx(
        losses["separation"], rel=1e-5
    )


def test_orthogonality_and_l1_match_original() -> None:
    head, _ = reference_head()
    assert float(orthogonality_loss(head.slots)) == pytest.approx(
        REFERENCE["orthogonality"], rel=1e-5
    )
    assert float(l1_wrong_class(head)) == pytest.approx(REFERENCE["l1"], rel=1e-5)


def test_initial_slots_are_the_originals_xavier_layout() -> None:
    head = ProtoPoolHead(K, S, P, D, seed=5)
    gen = torch.Generator().manual_seed(5)
    torch.rand(P, D, generator=gen)
    raw = torch.empty(K, P, S)
    torch.nn.init.xavier_normal_(raw, generator=gen)
    assert torch.equal(head.slots.detach(), raw.transpose(1, 2))
