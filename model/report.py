"""The evaluate stage's visual report: one folder per model with ``index.html`` and PNGs
(plain HTML, no script, no external resource: it opens offline).

* **Prototypes** (``evaluate.report_prototypes`` of them, round-robin over the classes: the
  first prototype of each class, then the second, ...; prototypes of no class, e.g. a
  pool prototype no ProtoPool slot uses or a PIP-Net prototype without a weight > 1e-3,
  are not shown): where the prototype was pushed (push.json: the training view for
  ProtoMask, with the training image and that view's box; the training image with the
  feature-map cell for the full-image models, ProtoPool's push.json having ProtoPNet's
  format), then its top-k test inputs by similarity (PIP-Net: pooled presence) with the
  saliency overlay (ProtoMask: the matched view; otherwise the image as the model sees
  it). PIP-Net is never pushed (its prototypes are softmax channels, not vectors to
  project), so its rows start with the top test inputs and a sentence says why.
* **Test images** (``evaluate.report_images``, spread over the sorted test split): the
  image with its view boxes (ProtoMask) and, for each of its top-k prototypes, the
  saliency on the image canvas (pasted back for ProtoMask), the matched view's box, the
  prototype's push source, its class and similarity; with a native map
  (:data:`pipeline.model_inputs.KINDS`) a second row with the upsampled similarity /
  presence maps.

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

import cv2
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from torch import Tensor

from model.formatting import REPORT, format_metric
from model.metric_layout import GROUPS, value_of
from model.metrics import top_fraction_mask
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

TILE = 128  # displayed side of a tile in px (PNGs are at least this large)


# ------------------------------------------------------------------------- drawing
def upscale(rgb: np.ndarray, side: int = TILE) -> np.ndarray:
    """Enlarge small images (nearest for tiny crops, keeping aspect) so tiles are readable."""
    h, w = rgb.shape[:2]
    f = max(1, int(np.ceil(side / max(h, w))))
    if f == 1:
        return rgb
    return cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_NEAREST)


def overlay(
    rgb: np.ndarray, saliency: np.ndarray, top_fraction: float, g: Optional[np.ndarray] = None
) -> np.ndarray:
    """rgb (H, W, 3) uint8 with the saliency (H, W) heat map, S outlined white, G green."""
    sal = np.clip(np.nan_to_num(saliency.astype(np.float64)), 0, None)
    positive = sal[sal > 0]
    # scale to a high percentile, not the maximum: a few extreme LRP pixels would leave
    # everything else invisible
    peak = float(np.percentile(positive, 99.5)) if positive.size else 0.0
    norm = np.clip(sal / peak, 0, 1) if peak > 0 else sal
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (0.85 * norm)[:, :, None]  # linear: weak diffuse relevance stays faint
    out = (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)
    f = max(1, int(np.ceil(TILE / max(rgb.shape[:2]))))
    out = cv2.resize(out, (rgb.shape[1] * f, rgb.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    s = top_fraction_mask(torch.from_numpy(saliency.astype(np.float32)), top_fraction).numpy()
    _outline(out, s, f, (255, 255, 255))
    if g is not None:
        _outline(out, g, f, (0, 200, 0))
    return out


def _outline(canvas: np.ndarray, mask: np.ndarray, factor: int, colour: tuple) -> None:
    if not mask.any():
        return
    big = cv2.resize(
        mask.astype(np.uint8), (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST
    )
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def with_boxes(rgb: np.ndarray, boxes: np.ndarray, labels: bool = True) -> np.ndarray:
    """The image enlarged (:func:`upscale`) with inclusive boxes (x0, y0, x1, y1) drawn:
    numbered views (``labels``) or single regions (:func:`pipeline.drawing.draw_boxes`)."""
    out = upscale(rgb).copy()
    boxes = np.asarray(boxes).reshape(-1, 4)
    return draw_boxes(
        out, boxes, out.shape[0] / rgb.shape[0], views=range(len(boxes)) if labels else None
    )


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write H x W x 3 uint8 pixels as a PNG (folders made as needed), to a temporary name
    renamed over ``path``: a hard-linked copy in the DVC cache is never written into."""
    with atomic_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", optimize=False)


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

    def _load_push(self, project_root: Path, inputs, shown: list[int]) -> None:
        """Push source pixels of the shown prototypes and of those in the samples."""
        path = (
            project_root / layout.train_dir(self.kind, self.seed) / self.ev.checkpoint / "push.json"
        )
        if not self.spec.pushed or not path.is_file():
            return
        records = {int(r["prototype"]): r for r in json.loads(path.read_text())}
        wanted = set(shown) | {p for s in self.samples for p in s["ids"]}
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
            else:
                small = resize_square(rgb, self.input_size)
                gh, gw = self.grid
                cell_h, cell_w = self.input_size / gh, self.input_size / gw
                h, w = int(rec["h"]), int(rec["w"])
                box = [w * cell_w, h * cell_h, (w + 1) * cell_w - 1, (h + 1) * cell_h - 1]
                entry["context"] = with_boxes(small, np.asarray([box]), labels=False)
                entry["cell"] = (h, w)
            self.push[p] = entry

    # ---- writing
    def write(self, out_dir: Path, metrics: dict) -> None:
        """index.html and the PNGs under ``out_dir`` (old PNGs removed first)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in list(out_dir.glob("*.png")) + list(out_dir.glob("img/*.png")):
            old.unlink()
        body = [
            self._header(metrics),
            self._metrics_table(metrics),
            self._prototype_section(),
            self._sample_section(),
        ]
        for name, pixels in self.images.items():
            save_png(out_dir / name, pixels)
        page = _PAGE.format(title=html.escape(f"{self.kind} evaluation"), body="\n".join(body))
        with atomic_file(out_dir / "index.html") as tmp:  # never into a linked cache file
            tmp.write_text(page, encoding="utf-8")

    def _img(self, name: str, pixels: np.ndarray, caption: str, width: int = TILE) -> str:
        self.images[f"img/{name}.png"] = pixels
        return (
            f'<figure><img src="img/{name}.png" width="{width}" alt="{html.escape(name)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    def _class(self, c: int) -> str:
        names = self.test.class_names
        if not 0 <= c < len(names):
            return str(c)
        name = names[c]
        shown = html.escape(name.replace("_", " "))
        return f"<span title='{html.escape(name)}'>{shown}</span>"

    def _header(self, metrics: dict) -> str:
        model = self.spec.title
        run = {k: value_of(metrics, k) for k in GROUPS["run"]}
        method = run["saliency"]
        if method == "prp":
            method = f"PRP ({run['lrp_composite']})"
        return (
            f"<h1>{model}: explanations on the test split</h1>"
            f"<p>{run['test_images']} test images, checkpoint "
            f"<code>{run['checkpoint']}</code>, saliency {html.escape(str(method))}, "
            f"top-{run['top_k']} prototypes per image. Overlays: heat = positive "
            f"saliency (scaled to its 99.5th percentile), white outline = S (top "
            f"{100 * self.ev.top_fraction:g}% pixels), green outline = ground-truth "
            f"object.</p>"
        )

    def _metrics_table(self, metrics: dict) -> str:
        rows = []
        for key, value in _flatten(metrics):
            text = html.escape(format_metric(value, REPORT))
            rows.append(f"<tr><td>{html.escape(key)}</td><td>{text}</td></tr>")
        return (
            "<h2>Metrics</h2><details open><summary>metrics JSON (also "
            "<code>metrics.json</code>)</summary><table class='m'>"
            + "".join(rows)
            + "</table></details>"
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
                self._img(
                    f"push_{p}_view",
                    upscale(push["view_rgb"]),
                    f"pushed view<br>train image {push['image_id']}",
                )
            )
            tiles.append(self._img(f"push_{p}_context", push["context"], "its box"))
        else:
            h, w = push["cell"]
            tiles.append(
                self._img(
                    f"push_{p}_context",
                    push["context"],
                    f"pushed patch (cell {h},{w})<br>train image {push['image_id']}",
                )
            )
        return "".join(tiles)

    def _prototype_section(self) -> str:
        if not self.prototypes:
            return "<h2>Prototypes</h2><p>none shown (evaluate.report_prototypes is 0).</p>"
        what = "test image (model input)" if self.spec.full_image else "matched view"
        by = "pooled presence" if self.spec.presence else "similarity"
        parts = [
            f"<h2>Prototypes</h2><p>Each row: "
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
                    self._img(
                        f"proto_{p}_top{rank}",
                        overlay(meta["rgb"], meta["map"], self.ev.top_fraction),
                        f"#{rank + 1} image {image_id}{view}<br>{self.score} {meta['sim']:.3f}<br>"
                        f"{self._class(label)}",
                    )
                )
            parts.append(
                f"<div class='row'><div class='label'>prototype {p}<br>class "
                f"{self._class(entry['class'])}</div>{''.join(tiles)}</div>"
            )
        return "\n".join(parts)

    def _sample_section(self) -> str:
        if not self.samples:
            return "<h2>Test images</h2><p>none shown (evaluate.report_images is 0).</p>"
        parts = [
            "<h2>Test images</h2><p>Each row: the test image (ProtoMask: with its view "
            "boxes, numbered), then for each of its top prototypes the saliency on the "
            "image canvas"
            + (
                " pasted back into the matched view's box (outlined)"
                if not self.spec.full_image
                else ""
            )
            + ", and the prototype's push source.</p>"
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
                self._img(
                    f"test_{image_id}",
                    first,
                    f"image {image_id}<br>true {self._class(label)}<br>predicted "
                    f"{self._class(s['pred'])} ({verdict})",
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
                        self._img(
                            f"test_{image_id}_{method}_{rank}",
                            img,
                            f"prototype {p} ({self._class(pc_)})<br>{self.score} "
                            f"{s['sims'][rank]:.3f}{view}",
                        )
                    )
                    if method == self.ev.saliency and p in self.push:
                        tiles.append(self._push_thumb(p))
            parts.append(f"<div class='row'>{''.join(tiles)}</div>")
        return "\n".join(parts)

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


def _push_note(pushed: bool) -> str:
    if pushed:
        return ""
    return (
        " This model is never pushed: its prototypes are channels of a softmax presence "
        "map, not vectors that could be projected onto a training patch, so there is no "
        "push source to show."
    )


def _flatten(doc: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in doc.items():
        if isinstance(value, dict) and "absent" not in value:
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
.row {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 6px;
        border-bottom: 1px solid #eee; padding: 8px 0; }}
.label {{ width: 120px; font-weight: bold; font-size: 12px; align-self: center;
          overflow-wrap: anywhere; }}
figure {{ margin: 0; text-align: center; width: min-content; }}
figcaption {{ font-size: 10px; line-height: 1.2; overflow-wrap: anywhere; min-width: 64px; }}
img {{ image-rendering: pixelated; border: 1px solid #999; display: block; }}
table.m {{ border-collapse: collapse; font-size: 12px; }}
table.m td {{ border: 1px solid #ddd; padding: 2px 6px; }}
</style></head>
<body>
{body}
</body></html>
"""
