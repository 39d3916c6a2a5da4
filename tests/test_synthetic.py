"""The synthetic fine-grained dataset: layout, determinism, ground truth, difficulty."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import synthetic, synthetic_designs, synthetic_drawing
from pipeline.errors import DatasetError
from pipeline.params import SyntheticParams, as_dict
from pipeline.synthetic import generate_synthetic

# 6 classes x 20 images, half of them test: 60 train and 60 test images, enough for
# stable accuracies (one test image is 1.7 points), generated in well under a second.
CFG = SyntheticParams(
    seed=0, num_classes=6, images_per_class=20, image_size=96, test_fraction=0.5, distractors=5
)
TINY = SyntheticParams(seed=0, num_classes=2, images_per_class=4, image_size=64)
CUB_FILES = (
    "images.txt",
    "classes.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "parts/parts.txt",
    "parts/part_locs.txt",
    "attributes.json",
    "generator.json",
    "WRITTEN_BY_PROTOMASK.txt",
)


@dataclass
class Sample:
    """One image of the written dataset, read back from the CUB files."""

    image_id: int
    path: str
    class_id: int
    is_train: bool
    box: tuple[float, ...]
    parts: dict[int, tuple[float, float, int]]
    part_lines: list[str]
    rgb: np.ndarray
    mask: np.ndarray


def read_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def read_dataset(root: Path) -> list[Sample]:
    """Parse the CUB listing files and load every image and segmentation."""
    labels = {int(i): int(c) for i, c in read_rows(root / "image_class_labels.txt")}
    train = {int(i): flag == "1" for i, flag in read_rows(root / "train_test_split.txt")}
    boxes = {
        int(r[0]): tuple(float(v) for v in r[1:]) for r in read_rows(root / "bounding_boxes.txt")
    }
    parts: dict[int, dict[int, tuple[float, float, int]]] = {}
    part_lines: dict[int, list[str]] = {}
    for line in (root / "parts/part_locs.txt").read_text().splitlines():
        i, p, x, y, v = line.split()
        parts.setdefault(int(i), {})[int(p)] = (float(x), float(y), int(v))
        part_lines.setdefault(int(i), []).append(line)
    samples = []
    for i, rel in read_rows(root / "images.txt"):
        image_id = int(i)
        bgr = cv2.imread(str(root / "images" / rel), cv2.IMREAD_UNCHANGED)
        seg = cv2.imread(str(root / "segmentations" / rel), cv2.IMREAD_UNCHANGED)
        samples.append(
            Sample(
                image_id,
                rel,
                labels[image_id],
                train[image_id],
                boxes[image_id],
                parts[image_id],
                part_lines[image_id],
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                seg,
            )
        )
    return samples


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic(root, CFG)
    return root


@pytest.fixture(scope="module")
def samples(dataset_root: Path) -> list[Sample]:
    return read_dataset(dataset_root)


# ------------------------------------------------------------------ determinism
def test_same_params_give_the_same_bytes(dataset_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_synthetic(again, CFG)
    first, second = file_hashes(dataset_root), file_hashes(again)
    assert len(first) == 2 * CFG.num_classes * CFG.images_per_class + len(CUB_FILES)
    assert first == second


def test_an_image_does_not_depend_on_generation_order(samples: list[Sample]) -> None:
    design = synthetic.class_designs(CFG)[2]
    alone = synthetic.render_image(design, CFG, 5)
    written = [s for s in samples if s.class_id == 3][5]
    assert np.array_equal(alone.rgb, written.rgb)


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", TINY)
    generate_synthetic(tmp_path / "b", SyntheticParams(**{**as_dict(TINY), "seed": 1}))
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    images_a = {k: v for k, v in a.items() if k.startswith("images/")}
    images_b = {k: v for k, v in b.items() if k.startswith("images/")}
    assert set(images_a.values()).isdisjoint(images_b.values())


# ------------------------------------------------------------------ layout
def test_every_cub_file_is_written(dataset_root: Path) -> None:
    for name in CUB_FILES:
        assert (dataset_root / name).is_file(), name
    assert not [p for p in dataset_root.parent.iterdir() if p.name.startswith(".")]


def test_listing_files_agree(dataset_root: Path, samples: list[Sample]) -> None:
    classes = read_rows(dataset_root / "classes.txt")
    assert [int(c) for c, _ in classes] == list(range(1, CFG.num_classes + 1))
    folders = {int(c): folder for c, folder in classes}
    for class_id, folder in folders.items():
        assert folder.startswith(f"{class_id:03d}.")
        assert (dataset_root / "images" / folder).is_dir()
    n = CFG.num_classes * CFG.images_per_class
    assert [s.image_id for s in samples] == list(range(1, n + 1))
    for s in samples:
        assert s.path.split("/")[0] == folders[s.class_id]
        assert len(s.box) == 4
    for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        assert [int(r[0]) for r in read_rows(dataset_root / name)] == list(range(1, n + 1))


def test_box_and_keypoint_lines_are_cub_floats(dataset_root: Path) -> None:
    for line in (dataset_root / "bounding_boxes.txt").read_text().splitlines():
        assert all("." in v for v in line.split()[1:]), line
    parts = read_rows(dataset_root / "parts/parts.txt")
    assert parts == [[str(i), n] for i, n in enumerate(synthetic.PART_NAMES, start=1)]
    rows = read_rows(dataset_root / "parts/part_locs.txt")
    assert len(rows) == CFG.num_classes * CFG.images_per_class * len(parts)
    for row in rows:
        assert len(row) == 5 and "." in row[2] and "." in row[3] and row[4] in ("0", "1")


def test_split_holds_the_test_fraction_of_each_class(samples: list[Sample]) -> None:
    for class_id in range(1, CFG.num_classes + 1):
        flags = [s.is_train for s in samples if s.class_id == class_id]
        assert flags.count(False) == round(CFG.test_fraction * CFG.images_per_class)
    assert synthetic.held_out_count(4, 0.01) == 1
    assert synthetic.held_out_count(4, 0.99) == 3


def test_images_and_segmentations_have_the_configured_size(samples: list[Sample]) -> None:
    size = CFG.image_size
    for s in samples:
        assert s.rgb.shape == (size, size, 3) and s.rgb.dtype == np.uint8
        assert s.mask.shape == (size, size) and s.mask.dtype == np.uint8
        assert set(np.unique(s.mask)) <= {0, 255}


def test_metadata_names_the_params_and_the_classes(dataset_root: Path) -> None:
    generator = json.loads((dataset_root / "generator.json").read_text())
    assert generator["params"] == as_dict(CFG)
    assert generator["version"] == synthetic.GENERATOR_VERSION
    attributes = json.loads((dataset_root / "attributes.json").read_text())
    folders = [folder for _, folder in read_rows(dataset_root / "classes.txt")]
    assert [c["folder"] for c in attributes["classes"]] == folders
    assert set(attributes["classes"][0]["attributes"]) == set(synthetic_designs.ATTRIBUTE_VALUES)


# ------------------------------------------------------------------ ground truth
def test_visible_keypoints_lie_on_the_object(samples: list[Sample]) -> None:
    hidden = 0
    for s in samples:
        for (part_id, (x, y, visible)), line in zip(
            sorted(s.parts.items()), s.part_lines, strict=False
        ):
            if visible:
                assert s.mask[int(round(y)), int(round(x))] > 127, (s.path, part_id)
            else:
                hidden += 1
                assert line.split()[2:] == ["0.0", "0.0", "0"]
    total = len(samples) * len(synthetic.PART_NAMES)
    assert 0 < hidden < 0.2 * total  # front distractors hide some parts, not most


def test_box_is_the_tight_box_of_the_mask(samples: list[Sample]) -> None:
    for s in samples:
        ys, xs = np.nonzero(s.mask > 127)
        x, y = xs.min(), ys.min()
        assert s.box == (x, y, xs.max() - x + 1, ys.max() - y + 1), s.path
        assert x > 0 and y > 0 and xs.max() < CFG.image_size - 1 and ys.max() < CFG.image_size - 1


def test_objects_vary_in_size_and_are_partly_occluded(samples: list[Sample]) -> None:
    areas = np.array([np.count_nonzero(s.mask) for s in samples]) / CFG.image_size**2
    assert areas.min() > 0.02 and areas.max() < 0.5
    assert areas.max() > 2 * areas.min()


# ------------------------------------------------------------------ class designs
@pytest.mark.parametrize("num_classes", [6, 10, 40])
def test_class_designs_differ_and_spread_the_palette(num_classes: int) -> None:
    cfg = SyntheticParams(num_classes=num_classes)
    designs = synthetic.class_designs(cfg)
    assert len({d.folder for d in designs}) == num_classes
    for a, b in itertools.combinations([d.attributes for d in designs], 2):
        differences = [k for k in a if a[k] != b[k]]
        assert len(differences) >= synthetic_designs.MIN_ATTRIBUTE_DIFFERENCES
        assert any(k in synthetic_designs.APPEARANCE_ATTRIBUTES for k in differences)
    for d in designs:
        body = d.attributes["body_colour"]
        assert body not in (d.attributes[k] for k in ("head_colour", "wing_colour", "tail_colour"))
    uses = Counter(d.attributes[k] for d in designs for k in synthetic_designs.COLOUR_ATTRIBUTES)
    counts = [uses[c] for c in synthetic_designs.PALETTE]
    assert max(counts) - min(counts) <= 1


# ------------------------------------------------------------------ difficulty
def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """4x4x4 RGB histogram, L1-normalised, square-rooted: a purely global statistic."""
    q = (rgb // 64).reshape(-1, 3).astype(np.int64)
    counts = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64)
    return np.sqrt(counts / counts.sum())


def part_features(s: Sample, radius: int = 2) -> dict[int, np.ndarray]:
    """Per visible head/body/wing/tail keypoint: mean and std colour of the object pixels in
    a (2 radius + 1)^2 window around it: ground truth only, no learning."""
    features = {}
    for part_id in (1, 2, 3, 4):
        x, y, visible = s.parts[part_id]
        if not visible:
            continue
        window = np.s_[
            max(0, int(y) - radius) : int(y) + radius + 1,
            max(0, int(x) - radius) : int(x) + radius + 1,
        ]
        pixels = s.rgb[window][s.mask[window] > 127] / 255.0
        features[part_id] = np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)])
    return features


def histogram_accuracy(samples: list[Sample]) -> float:
    """Nearest class centroid of global colour histograms, each bin standardised with the
    train split's mean and spread (so that rare, telling colours count): train -> test."""
    train = [s for s in samples if s.is_train]
    test = [s for s in samples if not s.is_train]
    x_train = np.array([colour_histogram(s.rgb) for s in train])
    mean, spread = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    x_train = (x_train - mean) / spread
    x_test = (np.array([colour_histogram(s.rgb) for s in test]) - mean) / spread
    y_train = np.array([s.class_id for s in train])
    classes = np.unique(y_train)
    centroids = np.array([x_train[y_train == c].mean(axis=0) for c in classes])
    nearest = ((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float(np.mean(classes[nearest] == np.array([s.class_id for s in test])))


def part_accuracy(samples: list[Sample]) -> float:
    """Nearest class centroid of per-part features, averaged over the visible parts."""
    train = [s for s in samples if s.is_train]
    test = [s for s in samples if not s.is_train]
    classes = sorted({s.class_id for s in samples})
    features = {s.image_id: part_features(s) for s in samples}
    centroids = {
        c: {
            p: np.mean(
                [
                    features[s.image_id][p]
                    for s in train
                    if s.class_id == c and p in features[s.image_id]
                ],
                axis=0,
            )
            for p in (1, 2, 3, 4)
        }
        for c in classes
    }

    def distance(f: dict[int, np.ndarray], c: int) -> float:
        return float(np.mean([np.linalg.norm(v - centroids[c][p]) for p, v in f.items()]))

    hits = [
        min(classes, key=lambda c: distance(features[s.image_id], c)) == s.class_id for s in test
    ]
    return float(np.mean(hits))


def test_only_the_parts_tell_the_classes_apart(samples: list[Sample]) -> None:
    """Global colour statistics fail, ground-truth parts succeed.

    Measured on this fixture (6 classes, 60 test images, chance 0.17): the histogram
    classifier scores 0.28 at seed 0 and 0.08-0.32 over seeds 0-9; the part classifier
    scores 1.00 at every seed. The bounds leave a margin of three standard errors (0.06)
    above the worst seed on the histogram side and three misses on the part side.
    """
    global_accuracy = histogram_accuracy(samples)
    parts_accuracy = part_accuracy(samples)
    assert global_accuracy <= 0.5
    assert parts_accuracy >= 0.95
    assert global_accuracy <= parts_accuracy / 2


def test_without_clutter_the_histogram_gives_the_class_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The histogram check has teeth: on a plain grey background without distractors the
    same classifier scores 1.00 (measured), so the clutter is what defeats it."""
    monkeypatch.setattr(
        synthetic_drawing,
        "_background",
        lambda rng, size: np.full((size, size, 3), 128, np.float32),
    )
    root = tmp_path / "plain"
    generate_synthetic(root, SyntheticParams(**{**as_dict(CFG), "distractors": 0}))
    assert histogram_accuracy(read_dataset(root)) >= 0.9


# ------------------------------------------------------------------ atomicity
def fail_on_third_image(monkeypatch: pytest.MonkeyPatch) -> None:
    render = synthetic.render_image
    calls = itertools.count()

    def flaky(*args, **kwargs):
        if next(calls) == 2:
            raise RuntimeError("disk on fire")
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_image", flaky)


def test_a_failed_run_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_third_image(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_synthetic(tmp_path / "data", TINY)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_keeps_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    generate_synthetic(root, TINY)
    before = file_hashes(root)
    fail_on_third_image(monkeypatch)
    with pytest.raises(RuntimeError):
        generate_synthetic(root, SyntheticParams(**{**as_dict(TINY), "seed": 7}))
    assert file_hashes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_a_new_run_replaces_the_previous_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_synthetic(root, TINY)
    (root / "stale.txt").write_text("left over")
    bigger = SyntheticParams(**{**as_dict(TINY), "num_classes": 3})
    generate_synthetic(root, bigger)
    assert not (root / "stale.txt").exists()
    assert len(read_rows(root / "classes.txt")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


# ------------------------------------------------------- never the user's files
def user_files(root: Path) -> dict[str, str]:
    """A folder of someone's own data (CUB-like names, no marker)."""
    (root / "images" / "001.Bird").mkdir(parents=True)
    for i in range(3):
        (root / "images" / "001.Bird" / f"{i}.jpg").write_bytes(b"photo %d" % i)
    (root / "images.txt").write_text("1 001.Bird/0.jpg\n")
    return file_hashes(root)


def test_a_folder_of_someone_elses_files_is_never_replaced(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    before = user_files(root)
    with pytest.raises(DatasetError) as info:
        generate_synthetic(root, TINY)
    assert str(info.value) == (
        f"{root}: holds files protomask synthesize did not write (no WRITTEN_BY_PROTOMASK.txt); "
        "it will not delete files it did not write: move them elsewhere (and point data.root "
        "there) or empty the folder"
    )
    with pytest.raises(DatasetError, match="will not delete files it did not write"):
        synthetic.write_not_used(root, "cub")
    assert file_hashes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


@pytest.mark.parametrize("kind", ["absent", "empty", "marked", "old_dataset", "old_note"])
def test_what_synthesize_wrote_is_replaced(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "synthetic"
    if kind != "absent":
        root.mkdir()
    if kind == "marked":
        synthetic.write_not_used(root, "folder")
        assert sorted(p.name for p in root.iterdir()) == [
            "NOT_USED.txt",
            "WRITTEN_BY_PROTOMASK.txt",
        ]
        (root / "stale.txt").write_text("left over")
    elif kind == "old_dataset":  # written before the marker existed
        generate_synthetic(root, TINY)
        (root / "WRITTEN_BY_PROTOMASK.txt").unlink()
    elif kind == "old_note":
        (root / "NOT_USED.txt").write_text("data.source is cub: ...\n")
    generate_synthetic(root, TINY)
    assert (root / "WRITTEN_BY_PROTOMASK.txt").is_file()
    assert not (root / "stale.txt").exists() and not (root / "NOT_USED.txt").exists()


def test_a_foreign_generator_json_is_no_marker(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "generator.json").write_text('{"generator": "someone else"}')
    with pytest.raises(DatasetError, match="did not write"):
        generate_synthetic(root, TINY)


def test_a_symlink_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.jpg").write_bytes(b"x")
    (tmp_path / "synthetic").symlink_to(tmp_path / "mine")
    with pytest.raises(DatasetError, match="is a symbolic link; synthesize will not replace"):
        generate_synthetic(tmp_path / "synthetic", TINY)
    assert (tmp_path / "mine" / "x.jpg").read_bytes() == b"x"


@pytest.mark.parametrize(
    "params_text, message",
    [
        (
            "data:\n  source: cub\n  root: /datasets/CUB_200_2011\n",
            "protomask synthesize: data/synthetic: holds files protomask synthesize did not write",
        ),
        (
            "data:\n  source: folder\n  root: data/synthetic\n",
            "protomask synthesize: params.yaml: data.root 'data/synthetic' lies in data/synthetic",
        ),
    ],
)
def test_the_stage_keeps_the_users_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_text: str, message: str
) -> None:
    from click.testing import CliRunner

    from stages.cli import main

    monkeypatch.chdir(tmp_path)
    before = user_files(tmp_path / "data" / "synthetic")
    (tmp_path / "params.yaml").write_text(params_text)
    result = CliRunner().invoke(main, ["synthesize"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(message)
    assert file_hashes(tmp_path / "data" / "synthetic") == before
