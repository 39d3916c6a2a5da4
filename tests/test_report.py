"""The evaluate report: contributions read from the checkpoint's classification layer
(ProtoPNet's local analysis, every model kind), duplicate prototypes flagged, metric
names, links, self-activation boxes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import build_backbone
from model.checkpoint import load_checkpoint
from model.evaluation import run_evaluation
from model.formatting import METRICS
from model.model_kinds import explained_model
from model.pipnet import PIPNet
from model.protopool import ProtoPool
from model.report_duplicates import duplicates
from model.report_evidence import class_evidence, own_units, runner_up
from model.report_self_activation import high_activation_box
from pipeline import layout
from tests.tiny_project import (
    EVALUATED_KINDS,
    TINY_EVALUATE,
    EvaluatedProject,
    copy_project,
    tiny_evaluated_params,
)


@pytest.mark.parametrize("kind", EVALUATED_KINDS)
def test_contributions_are_similarity_times_the_checkpoints_last_layer_weight(
    evaluated_project: EvaluatedProject, kind: str
) -> None:
    project, runs = evaluated_project
    report = runs[kind].report
    ckpt = layout.train_dir(kind, 0) / TINY_EVALUATE.checkpoint / "checkpoint.pt"
    weight = load_checkpoint(project / ckpt).model["head.last_layer.weight"].float()
    assert report.samples and all("evidence" in s for s in report.samples)
    for sample in report.samples:
        (_, pred, _, top), (_, second, _, rows2) = sample["evidence"]
        assert pred == sample["pred"] and second != pred
        for cls, rows in ((pred, top), (second, rows2)):
            assert len(rows) == TINY_EVALUATE.top_k
            values = [r.contribution for r in rows]
            assert values == sorted(values, reverse=True)
            for r in rows:
                assert r.weight == pytest.approx(float(weight[cls, r.unit]), rel=1e-6)
                # the similarity the evaluation pass recorded for this image
                assert r.score == pytest.approx(float(report._sim[sample["row"], r.unit]), 1e-5)
                assert r.contribution == pytest.approx(r.score * r.weight, rel=1e-6)
    page = (project / layout.evaluate_dir(kind, 0) / "index.html").read_text()
    assert page.count("<th>contribution</th>") == 2 * len(report.samples)


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(5)
    trunk = build_backbone("tiny_cnn", "none", freeze_bn=True)
    if kind == "protopool":
        net = ProtoPool(trunk, 3, num_prototypes=6, num_slots=2, prototype_dim=8).eval()
    else:
        net = PIPNet(trunk, 3, num_prototypes=8).eval()
    return explained_model(net, kind)


@pytest.mark.parametrize("kind", ["protopool", "pipnet"])
def test_protopool_slots_and_pipnet_presence_contributions_add_up_to_the_logits(
    kind: str,
) -> None:
    model = tiny(kind)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if kind == "pipnet":  # some prototypes over the 0.1 cut-off, some under it
            model.net.classifier.weight[:, :3] = 0.0
        out = model(x)
    evidence = class_evidence(kind, model, out)
    torch.testing.assert_close(evidence.logits(), out.logits.float(), rtol=1e-5, atol=1e-5)
    units = own_units(model, evidence)
    if kind == "protopool":
        assert evidence.unit_name == "slot" and evidence.scores.shape == (2, 6)
        assert evidence.unit_prototypes.tolist() == model.head.assignment().flatten().tolist()
        assert units == [[0, 1], [2, 3], [4, 5]]
    else:
        w = model.head.prototype_weights()
        assert torch.equal(evidence.weights, w) and (evidence.scores >= 0).all()
        assert evidence.scores[out.pooled < 0.1].eq(0).all()
        assert units[0] and all(
            0 not in us and w[k, us[0]] == w[k].max() for k, us in enumerate(units)
        )
    assert runner_up(torch.tensor([0.5, 2.0, 2.0])) == (1, 2)


def test_duplicates_flag_a_shared_source_and_a_constructed_similarity_twin() -> None:
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(20, 5, generator=gen)
    sim[:, 3] = sim[:, 1] + 5e-4  # prototype 3 answers every input as prototype 1 does
    sim[:4, 3] += 0.5  # ... except on 4 of 20
    sources = {0: (7, 0), 1: (8, 2), 2: (7, 0), 4: (9, 1)}
    flags = duplicates([0, 1, 2, 3, 4], sources, sim)
    assert set(flags) == {2, 3}
    assert flags[2].of == 0 and flags[2].reason == "same push source"
    assert flags[3].of == 1 and "80% of 20" in flags[3].reason
    sim[:12, 3] += 0.5  # now equal on 8 of 20 only: not most inputs
    assert set(duplicates([0, 1, 2, 3, 4], sources, sim)) == {2}
    # presence: two prototypes absent on every input are not compared
    absent = torch.zeros(6, 2)
    assert duplicates([0, 1], {}, absent, present=0.1) == {}
    assert set(duplicates([0, 1], {}, absent, present=None)) == {1}


def test_a_constructed_duplicate_prototype_is_flagged_in_the_report(
    evaluated_project: EvaluatedProject, tmp_path: Path
) -> None:
    project = copy_project(evaluated_project.root, tmp_path / "p")
    folder = project / layout.train_dir("protopnet", 0) / TINY_EVALUATE.checkpoint
    records = json.loads((folder / "push.json").read_text())
    twin = next(r for r in records if r["prototype"] == 1)
    twin.update({k: v for k, v in records[0].items() if k != "prototype"})
    (folder / "push.json").write_text(json.dumps(records))
    params = tiny_evaluated_params(sanity_images=1, report_prototypes=2)
    # checkpoint untouched: only the push record is shared
    evaluation = run_evaluation(params, "protopnet", project, write=False)
    units = {u["prototype"]: u for e in evaluation.report.class_entries for u in e["units"]}
    assert units[1]["duplicate"] is not None and units[1]["duplicate"].of == 0
    assert units[1]["duplicate"].reason == "same push source"


def test_high_activation_box_bounds_the_95th_percentile_region() -> None:
    yy, xx = np.mgrid[:20, :20]
    act = -((yy - 4.0) ** 2) - (xx - 12.0) ** 2  # a peak at (x 12, y 4)
    # the 20 (5 %) largest: distance^2 <= 5 around the peak (21 pixels at the tie value)
    assert high_activation_box(act).tolist() == [10, 2, 14, 6]


@pytest.mark.parametrize("kind", EVALUATED_KINDS)
def test_page_names_metrics_links_pages_and_shows_the_global_view(
    evaluated_project: EvaluatedProject, kind: str
) -> None:
    project, runs = evaluated_project
    page = (project / layout.evaluate_dir(kind, 0) / "index.html").read_text()
    for facts in METRICS[:8]:  # full names and meanings, not raw keys
        assert facts.label.replace("&", "&amp;") in page and facts.meaning in page
    assert "&uarr; higher" in page and "&darr; lower" in page
    assert re.search(r"6 test images in \d classes \(chance: \d+\.\d% balanced accuracy\)", page)
    other = "protopnet" if kind == "protomask" else "protomask"
    assert f"href='../../{other}/seed-0/index.html'" in page
    assert "href='../../comparison.md'" in page
    curves = sorted(p.name for p in (project / layout.train_dir(kind, 0) / "curves").glob("*.png"))
    assert curves and all(f"../../../train/{kind}/seed-0/curves/{n}'" in page for n in curves)
    assert "id='classes'" in page and "ProtoMask: with its view boxes" not in page
    entries = runs[kind].report.class_entries
    assert [e["class"] for e in entries] == list(range(len(entries)))
    assert sum(len(e["units"]) for e in entries) == runs[kind].report._sim.shape[1]
    if kind == "protopnet":
        assert "self-activation" in page and "95th percentile" in page
        assert all("box95" in push for push in runs[kind].report.push.values())
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert all((project / layout.evaluate_dir(kind, 0) / s).is_file() for s in srcs)


BROWSER = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
PROBE = """<script>
addEventListener("load", () => {
  const imgs = [...document.images];
  const b = document.body;
  b.dataset.images = imgs.length;
  b.dataset.broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const linked = [...document.querySelectorAll("[src], link[href]")];
  b.dataset.resources = linked.map(e => e.src || e.href).join(" ");
  b.dataset.sections = [...document.querySelectorAll("[id]")].map(e => e.id).join(" ");
});
</script>"""


def chromium(page: Path, *args: str) -> str:
    """Headless Chromium on a local page (no network needed); its stdout."""
    done = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--allow-file-access-from-files",
            f"--user-data-dir={page.parent / '.chromium'}",
            "--virtual-time-budget=10000",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: every host unresolved
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(BROWSER is None, reason="no headless browser: apt-get install chromium")
def test_the_report_renders_in_a_real_browser_offline_with_every_image(
    evaluated_project: EvaluatedProject, tmp_path: Path
) -> None:
    project, _ = evaluated_project
    folder = tmp_path / "report"
    shutil.copytree(project / layout.evaluate_dir("protopnet", 0), folder)
    page = (folder / "index.html").read_text()
    probe = folder / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium(probe, "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs["sections"].split() == ["links", "metrics", "classes", "prototypes", "images"]
    assert int(attrs["images"]) == len(re.findall(r"<img ", page)) > 10
    assert attrs["broken"] == "0"
    resources = attrs["resources"].split()
    assert resources and all(r.startswith("file://") for r in resources)  # nothing online
    shot = tmp_path / "shot.png"
    chromium(folder / "index.html", f"--screenshot={shot}", "--window-size=1000,1400")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1000) and pixels.std() > 10  # not a blank page


def test_a_protopool_prototype_in_two_slots_of_a_class_is_flagged() -> None:
    from model.report import ReportBuilder

    model = tiny("protopool")
    with torch.no_grad():  # class 0: both slots -> prototype 4; class 1 -> 2, 3
        model.head.slots.zero_()
        model.head.slots[0, :, 4] = 1.0
        model.head.slots[1, 0, 2] = model.head.slots[1, 1, 3] = 1.0
        model.head.slots[2, 0, 0] = model.head.slots[2, 1, 5] = 1.0
        out = model(torch.randn(1, 3, 32, 32))
    evidence = class_evidence("protopool", model, out)
    builder = ReportBuilder("protopool", 0, None, TINY_EVALUATE, 32)
    builder._class_entries(own_units(model, evidence), evidence)
    flags = [[u["duplicate"] for u in e["units"]] for e in builder.class_entries]
    assert flags[1] == flags[2] == [None, None] and flags[0][0] is None
    assert flags[0][1].of == 4 and flags[0][1].reason == "the same prototype as slot 0"
