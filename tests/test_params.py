"""The params schema: defaults, and one-line errors naming key, allowed values and value."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.errors import ParamsError
from pipeline.param_docs import (
    defaults_yaml,
    params_reference_markdown,
    readme_with_reference,
    result_keys,
    speed_only_keys,
)
from pipeline.params import (
    ClassicalParams,
    CropsParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    Params,
    SamParams,
    SegmentParams,
    TrainParams,
    choices_of,
    fingerprint,
    load_params,
    result_fingerprint,
)
from stages.cli import main

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_committed_params_are_the_schema_defaults() -> None:
    assert load_params(REPO / "params.yaml") == Params()


def test_generated_defaults_round_trip(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, defaults_yaml())) == Params()


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "data:\n  val_fraction: 0.2\n"))
    assert params.data.val_fraction == 0.2
    assert params.data.synthetic == Params().data.synthetic


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "data:\n  val_fraction: 0.7\n",
            "params.yaml: data.val_fraction must be in [0, 0.5), got 0.7",
        ),
        (
            "data:\n  source: imagenet\n",
            "params.yaml: data.source must be one of synthetic | cub | stanford_dogs | "
            "stanford_cars | folder, got 'imagenet'",
        ),
        ("data:\n  seed: 1.5\n", "params.yaml: data.seed must be of type int, got 1.5"),
        ("data:\n  seed: true\n", "params.yaml: data.seed must be of type int, got True"),
        (
            "data:\n  synthetic:\n    num_classes: 1\n",
            "params.yaml: data.synthetic.num_classes must be in [2, 200], got 1",
        ),
        ("data:\n  valfraction: 0.1\n", "params.yaml: unknown key data.valfraction (allowed: "),
        ("dat: {}\n", "params.yaml: unknown key dat (allowed: "),
        ("data: 3\n", "params.yaml: data must be a mapping, got 3"),
        ("data:\n  source: cub\n  root: data/synthetic\n  x: [\n", "params.yaml: not valid YAML"),
        (
            "data:\n  root: /elsewhere\n",
            "params.yaml: data.root must be data/synthetic when data.source is synthetic",
        ),
    ],
)
def test_bad_params_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(message.replace("params.yaml", str(path), 1))
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "data:\n  val_fraction: 0\n")).data.val_fraction == 0.0


# ------------------------------------------------------------- reading the file
def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes("data:\n  root: données\n".encode("latin-1"))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value) == (f"{path}: not UTF-8 text (line 2, byte 18): save it as UTF-8")


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbfdata:\n  seed: 3\n")
    assert load_params(path).data.seed == 3


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("data:\n  seed: 1\ntrain:\n  seed: 2\ndata:\n  seed: 3\n", "data", (1, 5)),
        ("data:\n  seed: 1\n  root: data/synthetic\n  seed: 2\n", "data.seed", (2, 4)),
        (
            "train:\n  protomask:\n    optim:\n      trunk_lr: 0.1\n      trunk_lr: 0.2\n",
            "train.protomask.optim.trunk_lr",
            (4, 5),
        ),
        ("data: {seed: 1, seed: 2}\n", "data.seed", (1, 1)),
    ],
)
def test_a_key_written_twice_is_refused_with_both_lines(
    tmp_path: Path, text: str, key: str, lines: tuple[int, int]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: key {key} is written twice (lines {lines[0]} and {lines[1]}): keep one"
    )


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = (
        "data:\n  synthetic: &s {seed: 1, num_classes: 3}\n"
        "train:\n  augment:\n    <<: {flip: 0.1, hue: 0.1}\n    flip: 0.2\n"
    )
    params = load_params(write(tmp_path, text))
    assert params.train.augment.flip == 0.2 and params.train.augment.hue == 0.1


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing set\n# at all\n", "---\n", "~\n"])
def test_an_empty_or_comment_only_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: the file holds no settings (empty or only comments); "
        "write the defaults with: python -m pipeline.params > params.yaml"
    )


def test_an_explicit_empty_mapping_takes_every_default(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "{}\n")) == Params()


@pytest.mark.parametrize(
    "written, value",
    [
        ("1e-4", 1e-4),
        ("1E-4", 1e-4),
        ("3e-3", 3e-3),
        ("1.5e-3", 1.5e-3),
        ("5e-1", 0.5),
        ("+2e-2", 0.02),
        ("0.0001", 1e-4),
        ("1.0e-2", 0.01),
        (".5e-1", 0.05),
    ],
)
def test_scientific_notation_is_a_float(tmp_path: Path, written: str, value: float) -> None:
    text = f"train:\n  protopnet:\n    optim:\n      trunk_lr: {written}\n"
    params = load_params(write(tmp_path, text))
    assert params.train.protopnet.optim.trunk_lr == value
    assert params.train.protopnet.optim.gamma == 0.1  # the section's own default, kept


@pytest.mark.parametrize(
    "written",
    [
        "1e-4",
        "3E5",
        "1.5e3",
        "-2e+2",
        "1.0",
        ".5",
        "7",
        "1_000",
        "0x1F",
        "2e",
        "e5",
        "1.2.3e4",
        "'1e-4'",
    ],
)
def test_numbers_read_as_dvc_reads_them(written: str) -> None:
    """DVC reads params.yaml as YAML 1.2 (ruamel): protomask must see the same scalar type
    for scientific notation, where YAML 1.1 (plain PyYAML) reads a string."""
    import yaml
    from ruamel.yaml import YAML

    from pipeline.params import ParamsLoader

    ours = yaml.load(f"v: {written}\n", Loader=ParamsLoader)["v"]
    theirs = YAML(typ="safe", pure=True).load(f"v: {written}\n")["v"]
    if written in ("1_000", "0x1F"):  # YAML 1.1 ints that 1.2 reads as strings
        return
    assert (type(ours), ours) == (type(theirs), theirs)


def test_a_quoted_number_stays_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  protomask:\n    optim:\n      trunk_lr: '1e-4'\n")
    with pytest.raises(ParamsError, match="trunk_lr must be of type float, got '1e-4'"):
        load_params(path)


# ------------------------------------------------------------------ data.root
@pytest.mark.parametrize(
    "root, message",
    [
        (
            "x" * 256,
            "data.root has a path component of 256 bytes, more than a file name may have "
            "(255): use a shorter path, got 'xxx",
        ),
        ("data/" + "é" * 128 + "/x", "data.root has a path component of 256 bytes"),
        (
            "/".join(["y" * 200] * 21),
            "data.root is 4220 bytes long, more than a path may have "
            "(4096): use a shorter path, got 'yyy",
        ),
    ],
)
def test_an_overlong_data_root_is_refused(tmp_path: Path, root: str, message: str) -> None:
    path = write(tmp_path, f"data:\n  source: folder\n  root: {root}\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert len(str(info.value)) < 300


def test_the_longest_allowed_component_passes(tmp_path: Path) -> None:
    path = write(tmp_path, f"data:\n  source: folder\n  root: /mnt/{'z' * 255}\n")
    assert load_params(path).data.root == f"/mnt/{'z' * 255}"


@pytest.mark.parametrize("source", ["cub", "folder"])
@pytest.mark.parametrize(
    "root",
    [
        "data/synthetic",
        "./data/synthetic/",
        "data/synthetic/mine",
        "data/../data/synthetic/CUB_200_2011",
    ],
)
def test_own_data_inside_data_synthetic_is_refused(tmp_path: Path, source: str, root: str) -> None:
    path = write(tmp_path, f"data:\n  source: {source}\n  root: {root}\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: data.root {root!r} lies in data/synthetic, which the synthesize stage "
        f"replaces when data.source is {source}: move your dataset elsewhere and point "
        "data.root at it"
    )


def test_a_link_into_data_synthetic_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    (tmp_path / "mine").symlink_to(tmp_path / "data" / "synthetic")
    path = write(tmp_path, "data:\n  source: cub\n  root: mine\n")
    with pytest.raises(ParamsError, match="data.root 'mine' lies in data/synthetic"):
        load_params(path)
    elsewhere = write(tmp_path, "data:\n  source: cub\n  root: data/synthetic_copy\n")
    assert load_params(elsewhere).data.root == "data/synthetic_copy"


def test_a_class_folder_root_holding_data_synthetic_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  source: folder\n  root: data\n")
    with pytest.raises(
        ParamsError,
        match="data.root 'data' holds data/synthetic, which the synthesize stage writes",
    ):
        load_params(path)
    assert load_params(write(tmp_path, "data:\n  source: cub\n  root: data\n")).data.root == "data"


# ------------------------------------------------------------ speed-only keys
def test_the_speed_only_keys() -> None:
    assert speed_only_keys() == [
        "data.decode_workers",
        "segment.device",
        "segment.workers",
        "segment.scheduler",
        "segment.sam.points_per_batch",
        "segment.sam.images_per_batch",
        "segment.sam.encoder_batch_size",
        "segment.sam2.points_per_batch",
        "segment.sam2.images_per_batch",
        "segment.sam2.encoder_batch_size",
        "crops.workers",
        "train.device",
        "train.loader_workers",
        "evaluate.device",
        "evaluate.batch_size",
        "evaluate.loader_workers",
    ]


def test_result_fingerprint_ignores_speed_only_keys_at_any_depth() -> None:
    seg = SegmentParams()
    fast = replace(
        seg,
        device="cuda:1",
        workers=8,
        scheduler="tcp://h:8786",
        sam=replace(seg.sam, points_per_batch=64, images_per_batch=16),
    )
    assert result_fingerprint(fast) == result_fingerprint(seg)
    assert fingerprint(fast) != fingerprint(seg)
    assert result_fingerprint(
        replace(seg, sam=replace(seg.sam, pred_iou_thresh=0.5))
    ) != result_fingerprint(seg)
    assert result_fingerprint(replace(seg, sam=replace(seg.sam, bf16=True))) != result_fingerprint(
        seg
    )
    train = TrainParams()
    assert result_fingerprint(replace(train, loader_workers=0, device="cpu")) == result_fingerprint(
        train
    )
    assert result_fingerprint(replace(train, bf16=False)) != result_fingerprint(train)
    # channels-last rounds differently: it changes the trained weights
    assert result_fingerprint(replace(train, channels_last=False)) != result_fingerprint(train)
    assert result_fingerprint(seg, train) != result_fingerprint(train, seg)


def test_result_fingerprint_is_fingerprint_without_speed_only_keys() -> None:
    for section in (ClassicalParams(), Params().data.synthetic, Params().evaluate.perturb):
        assert result_fingerprint(section) == fingerprint(section)
    for section in (SamParams(), CropsParams()):  # they have speed-only keys
        assert result_fingerprint(section) != fingerprint(section)


def test_result_keys_list_the_dotted_result_keys() -> None:
    keys = result_keys("segment")
    assert keys[:3] == ["segment.backend", "segment.shard_size", "segment.sam.model_type"]
    assert "segment.sam.pred_iou_thresh" in keys and "segment.classical" in keys
    assert not set(keys) & set(speed_only_keys())
    assert result_keys("crops")[0] == "crops.num_views" and "crops.workers" not in result_keys(
        "crops"
    )
    assert result_keys("segment.classical") == ["segment.classical"]
    assert "train.protomask" in result_keys("train") and "train.bf16" in result_keys("train")


def test_speed_only_keys_are_marked_in_the_yaml_and_the_readme() -> None:
    lines = defaults_yaml().splitlines()
    for key in speed_only_keys():
        leaf = key.rsplit(".", 1)[1]
        at = next(
            i
            for i, line in enumerate(lines)
            if line.strip().startswith(f"{leaf}:") and "Speed only" in lines[i - 1]
        )
        assert "Speed only: changes no result" in lines[at - 1], key
    table = params_reference_markdown()
    for row in table.splitlines()[2:]:
        key = row.split(" | ")[0].lstrip("| ")
        assert ("Speed only" in row) == (key in speed_only_keys()), key
        assert row.count(" | ") == 4, row  # bars inside a cell are escaped


def test_stage_exits_nonzero_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  val_fraction: 0.7\n")
    result = CliRunner().invoke(main, ["prepare", "--params", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"protomask prepare: {path}: data.val_fraction must be in [0, 0.5), got 0.7"
    ]


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["prepare", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: cannot read the params file" in result.output


def test_reference_lists_every_key() -> None:
    table = params_reference_markdown()
    for key in ("data.source", "data.val_fraction", "data.synthetic.num_classes"):
        assert f"| {key} |" in table


def test_readme_reference_is_generated_from_the_schema() -> None:
    text = (REPO / "README.md").read_text()
    assert readme_with_reference(text) == text, "run: python -m pipeline.params --readme"


def test_each_choice_list_is_its_implementation_registry() -> None:
    """A choice list of the schema names exactly what its implementation knows (the params
    module cannot import those without torch, so this test ties them)."""
    from model.backbones import backbone_names
    from model.saliency import COMPOSITES, METHODS
    from pipeline.crop_codecs import CODECS
    from pipeline.datasets import SOURCES
    from pipeline.views import FILL_MODES

    pairs = [
        ((CropsParams, "fill"), FILL_MODES),
        ((CropsParams, "codec"), CODECS),
        ((DataParams, "source"), SOURCES),
        ((EvaluateParams, "saliency"), METHODS),
        ((EvaluateParams, "lrp_composite"), COMPOSITES),
        ((ModelParams, "backbone"), backbone_names()),
    ]
    for (cls, name), registry in pairs:
        assert set(choices_of(cls, name)) == set(registry), f"{cls.__name__}.{name}"


def test_worker_counts_follow_the_machine_unless_set(monkeypatch) -> None:
    from model.training import loader_workers
    from pipeline import devices
    from pipeline.params import TrainParams

    monkeypatch.setattr(devices, "usable_cores", lambda: 16)
    assert devices.worker_count(None) == 16 and devices.worker_count(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 training processes here
    assert loader_workers(TrainParams()) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(TrainParams()) == 8  # at most 8
    assert loader_workers(TrainParams(loader_workers=0)) == 0
