"""Helpers for end-to-end tests: a throwaway git + DVC project that runs the real pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.params import Params, as_dict

REPO = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "pipeline", "model", "stages")


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin folder first on PATH (no analytics)."""
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        GIT_TERMINAL_PROMPT="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied key by key (nested)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project(path: Path, overrides: dict) -> Path:
    """A git repository with DVC initialised, the pipeline's code, and the default params
    with ``overrides`` applied (DVC's templating needs every key written out). Analytics
    stay off through ``run``'s environment (DVC_NO_ANALYTICS), not a config entry."""
    params = merged(as_dict(Params()), overrides)
    path.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    run(["dvc", "init", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "project"], path)
    return path


def set_param(project: Path, dotted: str, value: object) -> None:
    """Edit one key of the project's params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


TINY = {
    "data": {
        "val_fraction": 0.25,
        "synthetic": {"num_classes": 3, "images_per_class": 8, "image_size": 64},
    },
    "segment": {"workers": 1, "shard_size": 8},
    "crops": {"num_views": 4, "size": 16, "workers": 1},
    "train": {
        "seeds": [0],
        "batch_size": 4,
        "loader_workers": 0,
        "device": "cpu",
        "model": {"backbone": "tiny_cnn", "weights": "none", "baseline_image_size": 32},
        **{
            model: {
                "warmup_epochs": 1,
                "joint_epochs": 1,
                "push_every": 0,
                "last_layer_epochs": 1,
                "prototypes_per_class": 2,
                "prototype_dim": 8,
            }
            for model in ("protomask", "protopnet")
        },
        "protopool": {
            "warmup_epochs": 1,
            "joint_epochs": 1,
            "last_layer_epochs": 1,
            "num_prototypes": 4,
            "num_slots": 2,
            "prototype_dim": 8,
            "gumbel_epochs": 2,
        },
        "pipnet": {"pretrain_epochs": 1, "train_epochs": 2, "finetune_epochs": 1},
    },
}


def stage_env() -> dict[str, str]:
    """Environment for running ``python -m stages.cli`` on this checkout's code."""
    return dict(os.environ, PYTHONPATH=str(REPO))


def kill_when(cmd: list[str], cwd: Path, ready, timeout: float = 120, poll: float = 0.02) -> None:
    """Start ``cmd`` in its own session, SIGKILL the whole group once ``ready()`` holds."""
    import signal
    import time

    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=stage_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
