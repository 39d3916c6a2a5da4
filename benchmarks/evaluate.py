"""Evaluate's speed: one process preparing its inputs serially, the same process with
DataLoader workers, and two torchrun processes sharing the test batches, side by side on
one project (run by hand, not a test).

    python benchmarks/evaluate.py                  # in a temporary folder
    python benchmarks/evaluate.py --project DIR    # built there once, reused after

Where DIR has no trained ProtoMask (or without ``--project``) it builds the default
synthetic project (240 images of 128 px, 70 in the test split, 8 views of 64 px,
EfficientNet-Lite0) and trains ProtoMask for one joint epoch and its push: what
evaluate costs does not depend on how well the model learned. Each way runs ``protomask
evaluate --model protomask`` in its own process(es) with the default evaluate params
otherwise; the time is the run log's
``total`` (the evaluation, without the process start and the report's PNG writing).
Prints each way's seconds, its share of time preparing inputs on rank 0, the speed-up
over the serial path and whether its metrics file has the serial run's bytes (torchrun
ranks compute on one thread each, so with a multi-threaded serial run the last digits
may differ: README, Scale-out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import layout  # noqa: E402
from pipeline.params import Params, as_dict, load_params  # noqa: E402


def build_project(root: Path) -> Params:
    """The default synthetic project with ProtoMask trained for one joint epoch."""
    from model.training import run_training
    from pipeline.crops import run_crops
    from pipeline.prepare import run_prepare
    from pipeline.segment import run_segment
    from pipeline.synthetic import generate_synthetic

    defaults = Params()
    short = replace(defaults.train.protomask, warmup_epochs=0, joint_epochs=1, last_layer_epochs=0)
    params = replace(defaults, train=replace(defaults.train, device="cpu", protomask=short))
    generate_synthetic(root / layout.SYNTHETIC_ROOT, params.data.synthetic)
    run_prepare(params.data, root)
    run_segment(params, root)
    run_crops(params, root)
    run_training(params, "protomask", root)
    return params


def evaluate(project: Path, params: Params, workers: int, procs: int) -> dict:
    """One evaluate run of ProtoMask: its run log's timings, wall seconds and metrics."""
    ev = replace(params.evaluate, device="cpu", loader_workers=workers)
    path = project / f"params-w{workers}-p{procs}.yaml"
    path.write_text(yaml.safe_dump(as_dict(replace(params, evaluate=ev))))
    stage = ["-m", "stages.cli", "evaluate", "--params", str(path), "--model", "protomask"]
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
        launch += ["--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    done = subprocess.run(launch + stage, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(launch + stage)} failed:\n{done.stderr[-3000:]}")
    log = json.loads((project / layout.run_log("evaluate-protomask-seed-0")).read_text())
    metrics = (project / layout.evaluate_metrics("protomask", 0)).read_bytes()
    return {"log": log, "wall": wall, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="the project folder (built if needed)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--procs", type=int, default=2, help="torchrun processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) if args.project is None else args.project.resolve()
        project.mkdir(parents=True, exist_ok=True)
        saved = project / "params.yaml"
        if not (project / layout.train_dir("protomask", 0) / "best").is_dir():
            print(f"building the default-size project in {project} ...", file=sys.stderr)
            params = build_project(project)
            saved.write_text(yaml.safe_dump(as_dict(params)))
        params = load_params(saved)
        ways = {
            "serial (1 process, inputs in it)": (0, 1),
            f"{args.workers} loader workers (1 process)": (args.workers, 1),
            f"{args.procs} torchrun processes (no workers)": (0, args.procs),
        }
        runs = {name: evaluate(project, params, *how) for name, how in ways.items()}
    serial = next(iter(runs.values()))
    n = json.loads(serial["metrics"])["run"]["test_images"]
    print(f"ProtoMask evaluate, {n} test images, {os.cpu_count()} CPUs:")
    print("| way | seconds (total) | of which inputs | wall s | speed-up | same bytes |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        total, inputs = run["log"]["total"], run["log"].get("inputs", 0.0)
        ratio = serial["log"]["total"] / total
        same = "yes" if run["metrics"] == serial["metrics"] else "no"
        print(
            f"| {name} | {total:.1f} | {inputs:.1f} | {run['wall']:.1f} | {ratio:.2f}x | {same} |"
        )


if __name__ == "__main__":
    main()
