"""The evaluate stage's visual report: one folder per model with ``index.html`` and PNGs
(plain HTML, no script, no external resource: it opens offline). The page
(:mod:`model.report_sections`) starts with links to the other models' pages, the
comparison and this run's training curves, then:

* **Metrics**: every metric with its full name, better direction and meaning
  (:data:`model.formatting.METRICS`).
* **Prototypes by class** (the global view): per class the units of the model's own
  classification layer (its prototypes; ProtoPool's slots; PIP-Net's prototypes with a
  weight above 1e-3), each with its prototype as pushed and its weight to the class;
  duplicates flagged (:mod:`model.report_duplicates`: same push source, or similarity
  within 1e-3 on most test inputs).
* **Prototypes** (``evaluate.report_prototypes`` of them, round-robin over the classes:
  the first prototype of each class, then the second, ...; prototypes of no class are not
  shown): where the prototype was pushed (push.json: the training view for ProtoMask,
  with the training image and that view's box; for the full-image models ProtoPNet's
  self-activation, :mod:`model.report_self_activation`: the upsampled similarity over the
  training image with the box of its 95th-percentile region), then its top-k test inputs
  by similarity (PIP-Net: pooled presence) with the saliency overlay (ProtoMask: the
  matched view; otherwise the image as the model sees it). PIP-Net is never pushed (its
  prototypes are softmax channels, not vectors to project), so a sentence says why.
* **Test images** (``evaluate.report_images``, spread over the sorted test split): the
  image (ProtoMask: with its view boxes) and, for each of its top-k prototypes, the
  saliency on the image canvas (pasted back for ProtoMask), the matched view's box, the
  prototype's push source, its class and similarity; with a native map a second row with
  the upsampled similarity / presence maps; then ProtoPNet's local analysis
  (:mod:`model.report_evidence`): the units contributing most (similarity x weight) to the
  predicted class and to the runner-up.

Overlays: the positive part of a map scaled to its 99.5th percentile, drawn with the jet
colour map whose opacity grows with the value; the white outline is S (the top
``evaluate.top_fraction`` pixels the metrics use); a green outline is the ground-truth
object G where there is one.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from model import report_sections as sections
from model.pipnet import PRESENCE_THRESHOLD
from model.report_drawing import TILE, overlay, save_png, upscale, with_boxes
from model.report_duplicates import Duplicate, duplicates
from model.report_evidence import class_evidence, own_units, runner_up, top_contributions
from model.report_self_activation import high_activation_box, self_activation
from model.saliency import prototype_saliency
from pipeline import layout
from pipeline.atomic import atomic_file
from pipeline.crop_shards import CropShard
from pipeline.drawing import draw_boxes
from pipeline.evaluation_set import id_array
from pipeline.imageio import load_rgb, resolve_inside
from pipeline.model_inputs import model_kind
from pipeline.params import EvaluateParams
from pipeline.tables import read_table
from pipeline.view_datasets import normalise
from pipeline.views import resize_square

__all__ = ["TILE", "ReportBuilder", "save_png", "shown_prototypes"]


# --------------------------------------------------------------------------- builder
class ReportBuilder:
    """Collects what the report shows during evaluation, then writes the folder."""

    def __init__(
        self, kind: str, seed: int, test: Any, ev: EvaluateParams, input_size: int
    ) -> None:
        self.kind = kind
        self.spec = model_kind(kind)
        self.score = "presence" if self.spec.presence else "sim"
        self.seed = seed
        self.test = test
        self.ev = ev
        self.input_size = input_size
        self.samples: list[dict] = []
        self.prototypes: list[dict] = []
        self.push: dict[int, dict] = {}
        self.images: dict[str, np.ndarray] = {}  # file name -> pixels, written by write()
        self.grid: tuple[int, int] = (1, 1)  # a full-image model's feature-map grid (h, w)
        self._classes: Optional[list[int]] = None  # class of each prototype
        self._sim: Optional[Tensor] = None  # (N, P) every test input's similarities
        self._root: Optional[Path] = None  # the project folder
        self.class_entries: list[dict] = []  # the global view (add_evidence)
        self.unit_name = "prototype"  # a unit of the classification layer (or "slot")

    # ---- test images
    def sample_rows(self, n: int) -> list[int]:
        count = min(self.ev.report_images, n)
        if count <= 0:
            return []
        return sorted({int(round(v)) for v in np.linspace(0, n - 1, count)})

    def add_sample(
        self,
        row: int,
        rgb: np.ndarray,
        ids: Tensor,
        sims: Tensor,
        logits: Tensor,
        matched: Optional[Tensor],
        canvases: dict[str, Tensor],
        g: Optional[np.ndarray],
    ) -> None:
        self.samples.append(
            {
                "row": row,
                "rgb": rgb,
                "ids": ids.tolist(),
                "sims": sims[ids].tolist(),
                "pred": int(logits.argmax()),
                "matched": None if matched is None else matched.tolist(),
                "maps": {m: c.numpy() for m, c in canvases.items()},
                "g": g,
            }
        )

    # ---- prototypes
    def add_prototypes(
        self,
        explainer,
        head,
        inputs,
        sim: Tensor,
        matched: Tensor,
        device: torch.device,
        project_root: Path,
    ) -> None:
        """Top-k test inputs of the shown prototypes (:func:`shown_prototypes`) with their
        input-level saliency, and the push sources (push.json)."""
        self._classes = head.prototype_classes.tolist()
        self._sim, self._root = sim.detach().float().cpu(), project_root
        shown = shown_prototypes(self._classes, self.ev.report_prototypes)
        self._load_push(project_root, inputs, shown)
        if not shown:
            return
        k = min(self.ev.top_k, sim.shape[0])
        top = torch.sort(sim[:, shown], dim=0, descending=True, stable=True).indices[:k]  # (k, n)
        raws, protos, metas = [], [], []
        for col, p in enumerate(shown):
            for rank in range(k):
                i = int(top[rank, col])
                raw = inputs.raw(i)
                m = None if self.spec.full_image else int(matched[i, p])
                if m is not None:
                    raw = raw[m]
                raws.append(raw)
                protos.append(head.prototypes.detach()[p])
                metas.append({"prototype": p, "row": i, "view": m, "sim": float(sim[i, p])})
        x = normalise(torch.stack(raws)).to(device)
        maps, _ = prototype_saliency(
            explainer,
            x,
            torch.stack(protos),
            method=self.ev.saliency,
            composite=self.ev.lrp_composite,
            batch_size=64,
        )
        maps = torch.nan_to_num(maps).cpu().numpy()
        by_p: dict[int, list] = {p: [] for p in shown}
        for raw, smap, meta in zip(raws, maps, metas, strict=True):
            meta["rgb"] = raw.permute(1, 2, 0).numpy()
            meta["map"] = smap
            by_p[meta["prototype"]].append(meta)
        self.prototypes = [
            {"prototype": p, "class": self._classes[p], "top": by_p[p]} for p in shown
        ]

    @torch.no_grad()
    def add_evidence(self, model: nn.Module, inputs, device: torch.device) -> None:
        """After :meth:`add_prototypes`: each sample's contributions (similarity x weight
        of the model's classification layer, :mod:`model.report_evidence`) to its predicted
        and runner-up class, the per-class global view with duplicate flags, and for the
        full-image models the pushed prototypes' self-activation."""
        if self.samples:
            rows = [s["row"] for s in self.samples]
            out = model(normalise(torch.stack([inputs.raw(i) for i in rows])).to(device))
            evidence = class_evidence(self.kind, model, out)
            for j, sample in enumerate(self.samples):
                logits = out.logits[j].float().cpu()
                sample["evidence"] = [
                    (role, c, float(logits[c]), top_contributions(evidence, j, c, self.ev.top_k))
                    for role, c in zip(("predicted", "runner-up"), runner_up(logits), strict=True)
                ]
        else:
            x = normalise(inputs.raw(0)[None]).to(device)
            evidence = class_evidence(self.kind, model, model(x))
        if self.spec.full_image and self.spec.pushed:
            self._self_activations(model, device)
        self._class_entries(own_units(model, evidence), evidence)

    def _self_activations(self, model: nn.Module, device: torch.device) -> None:
        """Replace each pushed prototype's context by its self-activation over the source
        image (heat, S of the top 5 %) with the box of the 95th-percentile region."""
        by_image: dict[int, list[int]] = {}
        for p, entry in sorted(self.push.items()):
            by_image.setdefault(entry["image_id"], []).append(p)
        for ps in by_image.values():
            small = self.push[ps[0]]["small"]
            maps = self_activation(self.kind, model, small, ps, device)
            for p, act in zip(ps, maps, strict=True):
                img = overlay(small, act - act.min(), 0.05)  # ProtoPNet: min-max scaled
                box = high_activation_box(act)
                draw_boxes(img, box[None], img.shape[0] / small.shape[0])
                self.push[p]["context"] = img
                self.push[p]["box95"] = box.tolist()

    def _class_entries(self, units: list[list[int]], evidence) -> None:
        """The global view's rows: per class its units with prototype, weight, push
        thumbnail and duplicate flag."""
        self.unit_name = evidence.unit_name
        protos = sorted({int(evidence.unit_prototypes[u]) for us in units for u in us})
        sources = {p: self.push[p]["source"] for p in protos if p in self.push}
        present = PRESENCE_THRESHOLD if self.spec.presence else None
        flags = duplicates(protos, sources, self._sim, present=present)
        self.class_entries = []
        for c, us in enumerate(units):
            rows, first_unit = [], {}
            for u in us:
                p = int(evidence.unit_prototypes[u])
                twin = first_unit.setdefault(p, u)  # ProtoPool: one prototype in two slots
                flag = flags.get(p)
                if twin != u:
                    flag = Duplicate(p, f"the same prototype as {self.unit_name} {twin}")
                push = self.push.get(p)
                pixels = None if push is None else push.get("view_rgb", push["context"])
                rows.append(
                    {
                        "unit": u,
                        "prototype": p,
                        "weight": float(evidence.weights[c, u]),
                        "duplicate": flag,
                        "pixels": None if pixels is None else upscale(pixels, TILE // 2),
                        "name": f"push_{p}_thumb",
                    }
                )
            images = {
                self.push[p]["image_id"] for p in {r["prototype"] for r in rows} if p in self.push
            }
            summary = f"{len(rows)} {self.unit_name}s"
            if images:
                summary += f", pushed onto {len(images)} training image{'s' * (len(images) > 1)}"
            self.class_entries.append({"class": c, "units": rows, "summary": summary})

    def _load_push(self, project_root: Path, inputs, shown: list[int]) -> None:
        """Push source pixels and source keys of the prototypes of some class, the shown
        ones and those in the samples."""
        path = (
            project_root / layout.train_dir(self.kind, self.seed) / self.ev.checkpoint / "push.json"
        )
        if not self.spec.pushed or not path.is_file():
            return
        records = {int(r["prototype"]): r for r in json.loads(path.read_text())}
        classes = self._classes or []
        wanted = set(shown) | {p for p, c in enumerate(classes) if c >= 0}
        wanted |= {p for s in self.samples for p in s["ids"]}
        images, _ = read_table(project_root / layout.IMAGES_INDEX, "images")
        paths = dict(zip(images["image_id"].to_pylist(), images["path"].to_pylist(), strict=True))
        crops, _ = read_table(project_root / layout.CROPS_INDEX, "crops")
        ids = sorted(
            {
                int(records[p]["image_id"])
                for p in wanted
                if p in records and int(records[p]["image_id"]) >= 0
            }
        )
        crops = crops.filter(pc.is_in(crops["image_id"], id_array(ids)))
        table = {
            (int(a), int(b)): (s, int(r), box)
            for a, b, s, r, box in zip(
                crops["image_id"].to_pylist(),
                crops["view"].to_pylist(),
                crops["shard"].to_pylist(),
                crops["row"].to_pylist(),
                crops["box"].to_pylist(),
                strict=True,
            )
        }
        cache: dict[int, np.ndarray] = {}
        for p in sorted(wanted):
            rec = records.get(p)
            if rec is None or int(rec["image_id"]) < 0:
                continue
            image_id = int(rec["image_id"])
            if image_id not in cache:
                cache[image_id] = load_rgb(resolve_inside(inputs.data_root, paths[image_id]))
            rgb = cache[image_id]
            entry = {"image_id": image_id, "distance": float(rec["distance"])}
            if not self.spec.full_image:
                shard, row, box = table[(image_id, int(rec["view"]))]
                with CropShard(inputs.crops_dir / shard) as cs:
                    entry["view_rgb"] = cs.rows(np.array([row]))[0]
                entry["context"] = with_boxes(rgb, np.asarray([box]), labels=False)
                entry["box"] = box
                entry["source"] = (image_id, int(rec["view"]))
            else:
                small = resize_square(rgb, self.input_size)
                gh, gw = self.grid
                cell_h, cell_w = self.input_size / gh, self.input_size / gw
                h, w = int(rec["h"]), int(rec["w"])
                box = [w * cell_w, h * cell_h, (w + 1) * cell_w - 1, (h + 1) * cell_h - 1]
                entry["context"] = with_boxes(small, np.asarray([box]), labels=False)
                entry["cell"] = (h, w)
                entry["small"] = small
                entry["source"] = (image_id, h, w)
            self.push[p] = entry

    # ---- writing
    def write(self, out_dir: Path, metrics: dict) -> None:
        """index.html and the PNGs under ``out_dir`` (old PNGs removed first)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in list(out_dir.glob("*.png")) + list(out_dir.glob("img/*.png")):
            old.unlink()
        body = [
            sections.links(self.kind, self.seed, self._root),
            sections.header(self.spec.title, metrics, self.ev.top_fraction),
            sections.metrics_table(metrics),
            self._class_section(),
            self._prototype_section(),
            self._sample_section(),
        ]
        for name, pixels in self.images.items():
            save_png(out_dir / name, pixels)
        page = sections.page(f"{self.spec.title} evaluation, seed {self.seed}", body)
        with atomic_file(out_dir / "index.html") as tmp:  # never into a linked cache file
            tmp.write_text(page, encoding="utf-8")

    def img(self, name: str, pixels: np.ndarray, caption: str, width: int = TILE) -> str:
        """A figure showing ``pixels`` (written as img/<name>.png) with its caption."""
        self.images[f"img/{name}.png"] = pixels
        return (
            f'<figure><img src="img/{name}.png" width="{width}" alt="{name}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    def class_label(self, c: int) -> str:
        """Class ``c``'s name as HTML."""
        return sections.class_label(self.test.class_names, c)

    def _class_section(self) -> str:
        if not self.class_entries:
            return "<h2 id='classes'>Prototypes by class</h2><p>none.</p>"
        note = _push_note(self.spec.pushed)
        if self.spec.full_image and self.spec.pushed:
            note += (
                " Push source: the prototype's self-activation over its training image "
                "(upsampled similarity; box: the region at or above its 95th percentile)."
            )
        return sections.class_section(
            self, self.class_entries, self.unit_name, self.spec.pushed, note
        )

    def _push_tiles(self, p: int) -> str:
        push = self.push.get(p)
        if not self.spec.pushed:
            return ""  # the section's text says why
        if push is None:
            return "<figure><figcaption>no push record</figcaption></figure>"
        tiles = []
        if "view_rgb" in push:
            tiles.append(
                self.img(
                    f"push_{p}_view",
                    upscale(push["view_rgb"]),
                    f"pushed view<br>train image {push['image_id']}",
                )
            )
            tiles.append(self.img(f"push_{p}_context", push["context"], "its box"))
        else:
            h, w = push["cell"]
            tiles.append(
                self.img(
                    f"push_{p}_context",
                    push["context"],
                    f"pushed patch (cell {h},{w}): its self-activation<br>train image "
                    f"{push['image_id']}; box: 95th percentile",
                )
            )
        return "".join(tiles)

    def _prototype_section(self) -> str:
        if not self.prototypes:
            return "<a id='prototypes'></a><h2>Prototypes</h2><p>none shown (evaluate.report_prototypes is 0).</p>"
        what = "test image (model input)" if self.spec.full_image else "matched view"
        by = "pooled presence" if self.spec.presence else "similarity"
        parts = [
            f"<a id='prototypes'></a><h2>Prototypes</h2><p>Each row: "
            f"{'where the prototype was pushed, then ' if self.spec.pushed else ''}its "
            f"top-{self.ev.top_k} test inputs by {by} ({what}) with the saliency "
            f"of that prototype.{_push_note(self.spec.pushed)}</p>"
        ]
        for entry in self.prototypes:
            p = entry["prototype"]
            tiles = [self._push_tiles(p)]
            for rank, meta in enumerate(entry["top"]):
                row = meta["row"]
                image_id = int(self.test.image_ids[row])
                label = int(self.test.labels[row])
                view = f", view {meta['view']}" if meta["view"] is not None else ""
                tiles.append(
                    self.img(
                        f"proto_{p}_top{rank}",
                        overlay(meta["rgb"], meta["map"], self.ev.top_fraction),
                        f"#{rank + 1} image {image_id}{view}<br>{self.score} {meta['sim']:.3f}<br>"
                        f"{self.class_label(label)}",
                    )
                )
            parts.append(
                f"<div class='row'><div class='label'>prototype {p}<br>class "
                f"{self.class_label(entry['class'])}</div>{''.join(tiles)}</div>"
            )
        return "\n".join(parts)

    def _sample_section(self) -> str:
        if not self.samples:
            return "<a id='images'></a><h2>Test images</h2><p>none shown (evaluate.report_images is 0).</p>"
        first = (
            "the test image"
            if self.spec.full_image
            else "the test image with its numbered view boxes"
        )
        pasted = (
            "" if self.spec.full_image else " pasted back into the matched view's box (outlined)"
        )
        parts = [
            f"<a id='images'></a><h2>Test images</h2><p>Each row: {first}, then for each of its top "
            f"prototypes the saliency on the image canvas{pasted}, and the prototype's push "
            "source. Below it, as ProtoPNet's local analysis: the "
            f"{self.unit_name}s contributing most to the predicted class and to the runner-up "
            f"(contribution = similarity x weight of the classification layer; the "
            f"contributions of all {self.unit_name}s sum to the logit{_unit_note(self.kind)}).</p>"
        ]
        classes = self._classes
        for s in sorted(self.samples, key=lambda d: d["row"]):
            row = s["row"]
            image_id = int(self.test.image_ids[row])
            label = int(self.test.labels[row])
            boxes = self.test.boxes[row]
            first = upscale(s["rgb"]) if self.spec.full_image else with_boxes(s["rgb"], boxes)
            verdict = "correct" if s["pred"] == label else "wrong"
            tiles = [
                self.img(
                    f"test_{image_id}",
                    first,
                    f"image {image_id}<br>true {self.class_label(label)}<br>predicted "
                    f"{self.class_label(s['pred'])} ({verdict})",
                )
            ]
            for method, maps in s["maps"].items():
                if len(s["maps"]) > 1:
                    name = _method_name(method, self.spec.native)
                    tiles.append(f"<div class='label'>{html.escape(name)}</div>")
                for rank, p in enumerate(s["ids"]):
                    img = overlay(s["rgb"], maps[rank], self.ev.top_fraction, s["g"])
                    view = ""
                    if s["matched"] is not None:
                        m = s["matched"][rank]
                        view = f", view {m}"
                        draw_boxes(
                            img,
                            boxes[m : m + 1],
                            img.shape[0] / s["rgb"].shape[0],
                            views=[m],
                            numbered=False,
                        )
                    pc_ = classes[p] if classes else -1
                    tiles.append(
                        self.img(
                            f"test_{image_id}_{method}_{rank}",
                            img,
                            f"prototype {p} ({self.class_label(pc_)})<br>{self.score} "
                            f"{s['sims'][rank]:.3f}{view}",
                        )
                    )
                    if method == self.ev.saliency and p in self.push:
                        tiles.append(self._push_thumb(p))
            parts.append(f"<div class='row'>{''.join(tiles)}</div>")
            parts.append(self._evidence_row(s))
        return "\n".join(parts)

    def _evidence_row(self, sample: dict) -> str:
        tables = [
            sections.contribution_table(self, role, c, logit, rows, self.unit_name)
            for role, c, logit, rows in sample.get("evidence", [])
        ]
        return f"<div class='row evidence-row'>{''.join(tables)}</div>"

    def _push_thumb(self, p: int) -> str:
        push = self.push[p]
        pixels = push.get("view_rgb", push["context"])
        name = f"push_{p}_thumb"
        self.images[f"img/{name}.png"] = upscale(pixels, TILE // 2)
        return (
            f'<figure class="thumb"><img src="img/{name}.png" width="{TILE // 2}" '
            f'alt="{name}"><figcaption>prototype {p}<br>as pushed</figcaption></figure>'
        )


def shown_prototypes(classes: list[int], limit: Optional[int]) -> list[int]:
    """The prototypes the report shows: ``limit`` of them (None: all) taken round-robin over
    the classes (the first prototype of every class, then the second, ...), in index order."""
    by_class: dict[int, list[int]] = {}
    for p, c in enumerate(classes):
        if c >= 0:  # -1: a prototype of no class (unused by ProtoPool, irrelevant in PIP-Net)
            by_class.setdefault(c, []).append(p)
    order = [
        ps[j]
        for j in range(max((len(v) for v in by_class.values()), default=0))
        for _, ps in sorted(by_class.items())
        if j < len(ps)
    ]
    return sorted(order if limit is None else order[:limit])


def _method_name(method: str, native: Optional[str]) -> str:
    return {
        "prp": "PRP",
        "gradient": "input x gradient",
        "upsampled": f"upsampled {native} map (the model's own)",
    }.get(method, method)


def _unit_note(kind: str) -> str:
    """What a unit's similarity is, where it is not the prototype's own similarity."""
    return {
        "protopool": "; a slot's similarity is the focal g(d_min) - g(d_avg) of its pool "
        "prototype, as ProtoPool's classification layer reads it",
        "pipnet": "; the similarity is the pooled presence, zeroed below PIP-Net's 0.1 cut-off",
    }.get(kind, "")


def _push_note(pushed: bool) -> str:
    if pushed:
        return ""
    return (
        " This model is never pushed: its prototypes are channels of a softmax presence "
        "map, not vectors that could be projected onto a training patch, so there is no "
        "push source to show."
    )
