"""The evaluate stage on ProtoPool and PIP-Net: metrics JSON with ProtoPNet's keys, the
native maps' method (``native``), the report, finite saliency; PIP-Net's presence explainer
and both models' compactness scalars by hand. With all four models trained here: dvc.yaml's
plots against the files train writes, and train's static curve PNGs.

Both models are trained for real on the tiny project (tiny_cnn trunk, a few epochs) and
go through the stage as it runs: load_model, the explainer of their kind, the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from model.backbones import build_backbone
from model.checkpoint import load_checkpoint
from model.curves import HEIGHT, WIDTH, write_curves
from model.evaluation import METRIC_KEYS, SALIENCY_KEYS, run_evaluation
from model.metric_layout import NATIVE, value_of
from model.metrics import Absent
from model.model_kinds import KINDS, make_explainer
from model.pipnet import PIPNet
from model.presence_saliency import PassSoftmax, PresenceHead, PresenceNetwork
from model.protopool import ProtoPool, ProtoPoolHead
from model.run_state import RunState
from model.saliency import prototype_saliency
from model.scalars import Scores, class_prototype_weights, model_metrics
from model.training import run_training
from pipeline import layout
from pipeline.params import EvaluateParams, Params
from tests.tiny_project import EvaluatedProject, copy_project, tiny_trained_params

FAST = EvaluateParams(
    device="cpu", batch_size=6, sanity_images=3, report_prototypes=2, report_images=1
)
NEW = ("protopool", "pipnet")


def eval_params() -> Params:
    return replace(tiny_trained_params(), evaluate=FAST)


def new_network(kind: str) -> torch.nn.Module:
    """A randomly initialised network of ``kind`` on tiny_cnn for 3 classes, eval mode."""
    torch.manual_seed(3)
    trunk = build_backbone("tiny_cnn", "none", freeze_bn=True)
    if kind == "protopool":
        return ProtoPool(trunk, 3, num_prototypes=6, num_slots=2, prototype_dim=8).eval()
    return PIPNet(trunk, 3, num_prototypes=8).eval()


@pytest.fixture(scope="module")
def evaluated(
    trained_project: Path, evaluated_project: EvaluatedProject, tmp_path_factory
) -> tuple[Path, dict]:
    """ProtoPool and PIP-Net trained and evaluated on a copy of the trained project, beside
    the session's ProtoPNet evaluation (the reference layout of a metrics document)."""
    project = copy_project(trained_project, tmp_path_factory.mktemp("new_models") / "p")
    params = eval_params()
    runs = {"protopnet": evaluated_project.runs["protopnet"]}
    for kind in NEW:
        run_training(params, kind, project)
        runs[kind] = run_evaluation(params, kind, project, write=True)
    return project, runs


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_or_absent(value: object) -> bool:
    return is_number(value) or (isinstance(value, dict) and set(value) == {"absent"})


@pytest.mark.parametrize("kind", NEW)
def test_metrics_have_protopnets_keys_and_the_upsampled_method(evaluated, kind: str) -> None:
    project, runs = evaluated
    doc = json.loads((project / layout.evaluate_metrics(kind, 0)).read_text())
    reference = runs["protopnet"].metrics
    assert doc["run"]["model"] == kind and list(doc) == list(reference)
    assert set(doc[NATIVE]) == set(reference[NATIVE])
    for key in METRIC_KEYS:
        if key != "randomisation":
            assert number_or_absent(value_of(doc, key)), (key, value_of(doc, key))
    for key in SALIENCY_KEYS:
        assert number_or_absent(value_of(doc[NATIVE], key)), key
    for section in (doc, doc[NATIVE]):
        sanity = section["randomisation"]
        assert sanity["pairs"] == 3 and is_number(sanity["spearman"])
    pool = eval_params().train.protopool.num_prototypes
    channels = build_backbone("tiny_cnn", "none", freeze_bn=True).out_channels
    most = pool if kind == "protopool" else channels  # PIP-Net: a prototype per channel
    size = doc["prototypes"]["global_size"]
    assert is_number(size) and 0 < size <= most
    pd_absent = kind == "pipnet"
    assert (not is_number(doc["prototypes"]["intra_pd"])) == pd_absent
    assert (not is_number(doc["prototypes"]["inter_pd"])) == pd_absent


@pytest.mark.parametrize("kind", NEW)
def test_report_is_written_with_finite_nonzero_saliency(evaluated, kind: str) -> None:
    project, runs = evaluated
    page = (project / layout.evaluate_dir(kind, 0) / "index.html").read_text()
    assert KINDS[kind].title in page and "<h2>Test images</h2>" in page
    if kind == "pipnet":
        assert "never pushed" in page and "presence 0." in page and "as pushed" not in page
    else:
        assert "pushed patch" in page
    report = runs[kind].report
    maps = [m for s in report.samples for m in s["maps"].values()]
    maps += [meta["map"] for p in report.prototypes for meta in p["top"]]
    assert maps and all(np.isfinite(m).all() for m in maps)
    assert any(np.abs(m).max() > 0 for m in maps)
    assert set(report.samples[0]["maps"]) == {"prp", "upsampled"}


def test_pass_softmax_rule_by_hand() -> None:
    logits = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.0]])
    presence = PassSoftmax.apply(logits, target)  # (1, 1, 2)
    e = math.e
    assert presence[0, 0].tolist() == pytest.approx([e**2 / (e**2 + e + 1), 1 / 3])
    (r,) = torch.autograd.grad(presence, logits, grad_outputs=presence.detach())
    assert torch.equal(r[0, [0, 2]], torch.zeros(2, 1, 2))  # all to the target's logit
    assert torch.allclose(r[0, 1], presence.detach()[0])


def test_presence_explainer_scores_pooled_presence_and_its_saliency_adds_up() -> None:
    net = PresenceNetwork(new_network("pipnet"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = net(x).pooled  # (2, P)
    ids = torch.tensor([1, 6])
    explainer = make_explainer("pipnet", net.trunk, net.add_on)
    targets = net.head.prototypes[ids]
    maps, scores = prototype_saliency(explainer, x, targets, method="prp")
    assert torch.allclose(scores, pooled[[0, 1], ids], rtol=1e-5)
    assert torch.isfinite(maps).all() and (maps.abs().flatten(1).amax(1) > 0).all()
    # PRP: relevance starts as the score and is conserved down to the pixels
    assert torch.allclose(maps.sum((1, 2)), pooled[[0, 1], ids], rtol=1e-2)
    grads, _ = prototype_saliency(explainer, x, targets, method="gradient")
    # input x gradient sums to the derivative of s((1 + h) x) at h = 0
    h = 1e-3
    explainer.targets, explainer.prp = targets, False
    with torch.no_grad():
        slope = (explainer((1 + h) * x) - explainer((1 - h) * x)) / (2 * h)
    assert torch.allclose(grads.sum((1, 2)), slope, rtol=1e-2, atol=1e-5)


def test_protopool_scalars_count_a_shared_prototype_once_per_class() -> None:
    head = ProtoPoolHead(2, 2, 4, 3)
    with torch.no_grad():  # class 0 slots -> prototypes 0, 1; class 1 slots -> 1, 1
        head.slots.fill_(0.0)
        for k, s, p in ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)):
            head.slots[k, s, p] = 5.0
    assert torch.equal(class_prototype_weights(head), torch.tensor([[1.0, 1, 0, 0], [0, 2, 0, 0]]))
    assert head.prototype_classes.tolist() == [0, 0, -1, -1]
    metrics = model_metrics(fake_scores(4), np.array([0, 1, 0]), head, 2)
    assert metrics["global_size"] == 2 and metrics["sparsity"] == pytest.approx(62.5)
    assert metrics["npr"] == 0 and is_number(metrics["intra_pd"])


def test_pipnet_scalars_count_relevant_prototypes() -> None:
    net = PIPNet(build_backbone("tiny_cnn", "none"), 2, num_prototypes=3)
    with torch.no_grad():
        net.classifier.weight.copy_(torch.tensor([[2.0, 0.0, 0.0005], [-1.0, 0.0, 1.0]]))
    head = PresenceNetwork(net).head
    assert isinstance(head, PresenceHead) and head.num_prototypes == 3
    assert head.prototype_classes.tolist() == [0, -1, 1]
    metrics = model_metrics(fake_scores(3), np.array([0, 1, 0]), head, 2)
    # relu(W) = [[2, 0, 5e-4], [0, 0, 1]]: 4 of 6 weights <= 1e-3
    assert metrics["global_size"] == 2 and metrics["sparsity"] == pytest.approx(400 / 6)
    assert metrics["npr"] == 0  # relu(W): no negative reasoning
    assert isinstance(metrics["intra_pd"], Absent) and isinstance(metrics["inter_pd"], Absent)


def fake_scores(p: int) -> Scores:
    """Model outputs of 3 images on ``p`` prototypes (top-2 by similarity)."""
    sim = torch.arange(3 * p, dtype=torch.float32).reshape(3, p) % 5
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    top = sim.topk(2, dim=1).indices
    return Scores(sim, sim + 0.1, logits, logits, top, torch.zeros(3, p, dtype=torch.long))


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        types.append(data[at + 4 : at + 8].decode("ascii"))
        at += 12 + length
    return types


def test_dvc_plots_are_the_curves_train_writes_loss_apart_from_accuracy(evaluated) -> None:
    """Every TSV a plot of dvc.yaml reads is one train wrote (seed 0, all four models),
    with that column; every one is plotted; no plot mixes accuracy, the L1 norm and the
    loss terms; the image plots are the folders of the static curve PNGs."""
    project, _ = evaluated
    plots = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    plotted, images = set(), set()
    for entry in plots["plots"]:
        if isinstance(entry, str):
            images.add(entry)
            assert sorted(p.name for p in (project / entry).glob("*.png")), entry
            continue
        ((title, spec),) = entry.items()
        assert spec["x"] == "step" and spec["template"] == "linear", title
        for path, column in spec["y"].items():
            header = (project / path).read_text().splitlines()[0]
            assert header.split("\t") == ["step", column], path
        columns = set(spec["y"].values())
        scales = {
            "accuracy" if c.endswith("_accuracy") else "l1" if c == "train_l1" else "loss"
            for c in columns
        }
        assert len(scales) == 1, (title, columns)
        plotted |= set(spec["y"])
    written = set()
    for model in layout.MODELS:
        out = layout.train_dir(model, 0)
        written |= {str(p.relative_to(project)) for p in (project / out).rglob("*.tsv")}
        assert str(out / "curves") in images, model
    assert plotted == written


def test_training_curves_are_deterministic_pngs_without_metadata(evaluated, tmp_path) -> None:
    project, _ = evaluated
    for model in layout.MODELS:
        out = project / layout.train_dir(model, 0)
        history = RunState.of(load_checkpoint(out / "final" / "checkpoint.pt")).history
        names = {"loss", "accuracy"} | ({"l1"} if model != "pipnet" else set())
        assert {p.stem for p in (out / "curves").glob("*.png")} == names
        for path in write_curves(history, tmp_path / model, f"{model} seed 0"):
            data = path.read_bytes()
            assert data == (out / "curves" / path.name).read_bytes(), path  # train's own
            assert set(png_chunks(data)) == {"IHDR", "IDAT", "IEND"}  # no time, no text
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert pixels.shape == (HEIGHT, WIDTH, 3) and (pixels < 250).any()
