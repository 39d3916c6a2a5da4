"""Progress and log lines (pipeline/progress.py): plain lines off a terminal, the level
from PROTOMASK_LOG and -q/-v, per-image counts of running shard tasks, and train's line
per step."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.progress import (
    LOGGER,
    Progress,
    ShardTracker,
    configure_logging,
    get_logger,
    log_level,
    track,
)
from tests.tiny_project import copy_project, tiny_trained_params


@pytest.fixture
def fresh_logger():
    """The protomask logger as it was before the test (no handler added, same level)."""
    logger = logging.getLogger(LOGGER)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_off_a_terminal_a_bar_is_a_line_per_share_of_the_work(fresh_logger, capsys) -> None:
    stream = io.StringIO()  # not a terminal
    configure_logging(0, stream)
    log = get_logger("probe")
    with Progress("probe", 40, "img", logger=log, every=0.25) as bar:
        for _ in range(40):
            bar.set_postfix(masks_per_image=2.5)
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"probe: {p} %" for p in (25, 50, 75, 100)]
    assert re.fullmatch(
        r"probe: 100 % \(40/40 img, [\d.]+ img/s, ETA 0:00\); masks_per_image=2.5", lines[-1]
    )
    assert "\r" not in stream.getvalue() and capsys.readouterr().err == ""  # no tqdm bar
    assert list(track(range(5), Progress("quiet", 5, logger=log, every=None))) == [0, 1, 2, 3, 4]
    assert stream.getvalue().count("\n") == 4  # every=None: no lines of its own


def test_the_level_comes_from_the_flags_then_the_environment(fresh_logger) -> None:
    assert log_level(0, {}) == logging.INFO
    assert log_level(0, {"PROTOMASK_LOG": "warning"}) == logging.WARNING
    assert log_level(1, {"PROTOMASK_LOG": "warning"}) == logging.DEBUG
    assert log_level(-1, {"PROTOMASK_LOG": "debug"}) == logging.WARNING
    stream = io.StringIO()
    configure_logging(-1, stream)
    with Progress("hidden", 4, logger=get_logger("probe"), every=0.5) as bar:
        bar.update(4)
    assert stream.getvalue() == ""  # -q: no progress


def test_the_cli_group_sets_the_level(fresh_logger, monkeypatch) -> None:
    from stages.cli import main

    runner = CliRunner()
    for args, level in ((["-q"], logging.WARNING), (["-v"], logging.DEBUG), ([], logging.ERROR)):
        monkeypatch.setenv("PROTOMASK_LOG", "error")
        assert runner.invoke(main, [*args, "synthesize", "--help"]).exit_code == 0
        assert fresh_logger.level == level
    monkeypatch.setenv("PROTOMASK_LOG", "loud")
    result = runner.invoke(main, ["synthesize", "--help"])
    assert result.exit_code == 2 and "PROTOMASK_LOG='LOUD' is not a log level" in result.output


def test_running_shards_advance_the_bar_per_image_with_running_means() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("probe.shards")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def postfix(c: dict[str, int]) -> dict[str, object]:
        return {"masks_per_image": c["masks"] / c["images"]}

    with Progress("segment", 8, logger=logger, every=0.25) as bar:
        tracker = ShardTracker(bar, {"a", "b"}, postfix)
        tracker.event((0.0, {"key": "a", "counts": {"images": 2, "masks": 10}}))
        tracker.event((0.0, {"key": "other-run", "counts": {"images": 3, "masks": 0}}))
        tracker.event((0.0, {"key": "b", "counts": {"images": 1, "masks": 2}}))
        assert bar.n == 3 and bar.postfix == {"masks_per_image": 4.0}
        tracker.finish("a", {"images": 4, "masks": 12})
        tracker.event((0.0, {"key": "a", "counts": {"images": 3, "masks": 11}}))  # late
        tracker.finish("b", {"images": 4, "masks": 4})
        assert tracker.counts == {}  # finished tasks live on in the totals only
    logger.handlers.clear()
    assert bar.n == 8 and bar.postfix == {"masks_per_image": 2.0}
    assert stream.getvalue().splitlines()[-1].endswith("; masks_per_image=2")


def test_train_logs_a_line_per_step(cropped_project: Path, tmp_path: Path, caplog) -> None:
    from model.training import run_training

    project = copy_project(cropped_project, tmp_path / "p")
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_training(tiny_trained_params(), "protomask", project)
    lines = [r.getMessage() for r in caplog.records if r.name == f"{LOGGER}.train"]
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"train protomask seed 0: step 1/2 joint epoch 0: loss [\d.e+-]+ \(cross_entropy "
        r"[\d.e+-]+, cluster .*\), train acc [\d.]+ %, val acc [\d.]+ %, [\d.]+ img/s, "
        r"ETA \d+:\d\d",
        lines[0],
    ), lines[0]
    assert re.fullmatch(
        r"train protomask seed 0: step 2/2 push: val acc [\d.]+ %, [\d.]+ img/s, ETA 0:00",
        lines[1],
    ), lines[1]
