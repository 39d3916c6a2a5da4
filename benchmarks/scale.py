"""The pipeline's own stages at growing dataset sizes: time per image, peak memory and
open files of every process (issue 15, "Done means").

For each size N (default 10^3, 10^4, 10^5 images) a temporary project gets a params.yaml
with a cheap setting (this measures the plumbing, not the models): the synthetic set at
``--image-size`` px in ``--classes`` classes, the classical segmenter, ``--views`` crops
of ``--crop-size`` px, a tiny_cnn ProtoMask trained for two schedule steps (one joint
epoch over the train split, then the push) and evaluate on the first ``--eval-images``
test images. Each stage runs as its own ``protomask`` command (``python -m stages.cli``)
in that project, as DVC would run it; meanwhile a sampler walks the command's process
tree (the stage process, its dask workers, DataLoader workers, helpers) every
``--interval`` seconds and records per process the peak RSS (the kernel's high-water
mark VmHWM, so a peak between samples is not missed; growth in the last interval before
a process exits is) and the peak count of open file descriptors (/proc/<pid>/fd).

Printed per size and stage: wall seconds, milliseconds per image of the set, the stage
process's peak RSS, the largest peak RSS among its descendant processes (how many there
were), the peak summed RSS of the tree at one sample (forked workers share pages, so this
over-counts), the stage process's peak open files and the tree's. Then, between the two
largest sizes, the ratio of each (goal: time per image and peak memory within 1.5x; open
files bounded by a constant).

Per image means the stage's wall time over N, the images of the whole set; train's work
is one epoch over the train split, the push over it and validation over the val split
(all proportional to N); evaluate's is the test-split index read (proportional to N) plus
a fixed ``--eval-images`` explained, so its per-image time falls with N by design.

Run by hand (not a test), e.g.:

    nice -n 10 python benchmarks/scale.py --sizes 1000 10000 --json scale.json
    python benchmarks/scale.py --sizes 100          # a check in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES: tuple[tuple[str, ...], ...] = (
    ("synthesize",),
    ("prepare",),
    ("segment",),
    ("crops",),
    ("train", "--model", "protomask", "--seed", "0"),
    ("evaluate", "--model", "protomask", "--seed", "0"),
)
MIB = 1024 * 1024


# ------------------------------------------------------------------ the project's params
def scale_params(args: argparse.Namespace, images: int) -> dict:
    """The params.yaml of one size: the defaults but for the cheap setting below."""
    if images % args.classes:
        raise SystemExit(f"--sizes: {images} is not a multiple of --classes {args.classes}")
    return {
        "data": {
            "synthetic": {
                "num_classes": args.classes,
                "images_per_class": images // args.classes,
                "image_size": args.image_size,
            },
        },
        "segment": {"backend": "classical", "device": "cpu", "workers": args.workers},
        "crops": {"num_views": args.views, "size": args.crop_size, "workers": args.workers},
        "train": {
            "device": "cpu",
            "batch_size": args.batch_size,
            "model": {"backbone": "tiny_cnn", "weights": "none", "baseline_image_size": 32},
            "protomask": {
                "prototypes_per_class": 2,
                "prototype_dim": 8,
                "warmup_epochs": 0,
                "joint_epochs": 1,
                "push_every": 0,
                "last_layer_epochs": 0,
            },
        },
        "evaluate": {
            "device": "cpu",
            "max_images": args.eval_images,
            "sanity_images": 4,
            "report_images": 2,
            "report_prototypes": 4,
        },
    }


# ------------------------------------------------------------------ process-tree sampling
@dataclass
class ProcessPeak:
    """One process's peaks over its life (bytes, descriptors)."""

    pid: int
    name: str
    peak_rss: int = 0
    peak_fds: int = 0


@dataclass
class TreePeaks:
    """Peaks of a command's process tree: per process, and summed at one sample."""

    root: int
    processes: dict[int, ProcessPeak] = field(default_factory=dict)
    tree_rss: int = 0
    tree_fds: int = 0

    def sample(self) -> None:
        """Read RSS high-water mark and open descriptors of every process in the tree."""
        try:
            root = psutil.Process(self.root)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = fds = 0
        for proc in members:
            try:
                hwm, now = high_water_mark(proc.pid)
                count = proc.num_fds()
                name = self.processes[proc.pid].name if proc.pid in self.processes else role(proc)
            except (psutil.Error, OSError):
                continue
            peak = self.processes.setdefault(proc.pid, ProcessPeak(proc.pid, name))
            peak.peak_rss = max(peak.peak_rss, hwm)
            peak.peak_fds = max(peak.peak_fds, count)
            rss += now
            fds += count
        self.tree_rss = max(self.tree_rss, rss)
        self.tree_fds = max(self.tree_fds, fds)

    def main(self) -> ProcessPeak:
        """The stage process itself."""
        return self.processes.get(self.root, ProcessPeak(self.root, "main"))

    def workers(self) -> list[ProcessPeak]:
        """Every descendant process seen (dask workers, DataLoader workers, helpers)."""
        return [p for pid, p in self.processes.items() if pid != self.root]


def high_water_mark(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in bytes, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmHWM", 0), values.get("VmRSS", 0)


def role(proc: psutil.Process) -> str:
    """What a descendant is, from its command line: a multiprocessing spawn (dask worker),
    its resource tracker, or a fork of the stage (DataLoader worker)."""
    line = " ".join(proc.cmdline())
    if "resource_tracker" in line:
        return "resource tracker"
    if "spawn_main" in line or "forkserver" in line:
        return "spawned worker"
    return "forked worker"


# ------------------------------------------------------------------ running one stage
@dataclass
class StageResult:
    """One stage at one size."""

    stage: str
    images: int
    seconds: float
    cpu_seconds: float
    main_rss: int
    worker_rss: int
    workers: int
    worker_roles: list[str]
    tree_rss: int
    main_fds: int
    tree_fds: int

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.images

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000.0 * self.cpu_seconds / self.images


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process of this one and of its
    descendants that were waited for (the stage's workers: their stage reaps them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stage(project: Path, argv: tuple[str, ...], images: int, interval: float) -> StageResult:
    """Run ``protomask <argv>`` in ``project`` while sampling its process tree."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1", PROTOMASK_LOG="WARNING")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log = project / f"scale-{argv[0]}.log"
    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stages.cli", *argv],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peaks = TreePeaks(proc.pid)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                peaks.sample()
                stop.wait(interval)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        code = proc.wait()
        seconds = time.perf_counter() - start
        stop.set()
        thread.join()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{argv[0]} failed with exit code {code} at {images} images:\n{tail}")
    workers = peaks.workers()
    return StageResult(
        stage=argv[0],
        images=images,
        seconds=seconds,
        cpu_seconds=children_cpu_seconds() - cpu_before,
        main_rss=peaks.main().peak_rss,
        worker_rss=max((w.peak_rss for w in workers), default=0),
        workers=len(workers),
        worker_roles=sorted({w.name for w in workers}),
        tree_rss=peaks.tree_rss,
        main_fds=peaks.main().peak_fds,
        tree_fds=peaks.tree_fds,
    )


def run_size(args: argparse.Namespace, images: int) -> list[StageResult]:
    """The chosen stages (``--stages``; default all) in a project of ``images`` images: a
    fresh temporary one, or ``<--reuse>/scale-<images>`` when given (kept, so a later run
    can measure the later stages on the same data)."""
    if args.reuse:
        folder = args.reuse / f"scale-{images}"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"scale-{images}-", dir=args.workdir))
    try:
        (folder / "params.yaml").write_text(yaml.safe_dump(scale_params(args, images)))
        results = []
        for argv in STAGES:
            if args.stages and argv[0] not in args.stages:
                continue
            result = run_stage(folder, argv, images, args.interval)
            print(row(result), flush=True)
            results.append(result)
        return results
    finally:
        if args.keep or args.reuse:
            print(f"kept {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ the table
HEADER = (
    "| images | stage | wall s | ms/image | CPU ms/image | main peak RSS MiB | worker peak RSS MiB (n) "
    "| tree RSS MiB | main open files | tree open files |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: StageResult) -> str:
    """One table row."""
    worker = f"{r.worker_rss / MIB:.0f} ({r.workers})" if r.workers else "-"
    return (
        f"| {r.images:,} | {r.stage} | {r.seconds:.1f} | {r.ms_per_image:.2f} | "
        f"{r.cpu_ms_per_image:.2f} | "
        f"{r.main_rss / MIB:.0f} | {worker} | {r.tree_rss / MIB:.0f} | {r.main_fds} | "
        f"{r.tree_fds} |"
    )


def ratio_rows(small: list[StageResult], large: list[StageResult]) -> list[str]:
    """Per stage, large over small: time per image, peak RSS (main, worker), open files."""
    lines = [
        f"| stage | ms/image x | CPU ms/image x | main RSS x | worker RSS x | main open files "
        f"{small[0].images:,} -> {large[0].images:,} | tree open files |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    by_stage = {r.stage: r for r in small}
    for b in large:
        a = by_stage.get(b.stage)
        if a is None:
            continue
        worker = f"{b.worker_rss / a.worker_rss:.2f}" if a.worker_rss else "-"
        lines.append(
            f"| {a.stage} | {b.ms_per_image / a.ms_per_image:.2f} | "
            f"{b.cpu_ms_per_image / a.cpu_ms_per_image:.2f} | "
            f"{b.main_rss / a.main_rss:.2f} | {worker} | {a.main_fds} -> {b.main_fds} | "
            f"{a.tree_fds} -> {b.tree_fds} |"
        )
    return lines


def read_runs(path: Path) -> list[list[StageResult]]:
    """The runs a --json file holds (one list of stages per size)."""
    return [[StageResult(**r) for r in results] for results in json.loads(path.read_text())]


def merge_runs(runs: Iterable[list[StageResult]]) -> list[list[StageResult]]:
    """One run per size, smallest first, from runs that may each hold some stages of a size
    (a later run's row of a stage replaces an earlier one's), stages in pipeline order."""
    merged: dict[int, dict[str, StageResult]] = {}
    for results in runs:
        for r in results:
            merged.setdefault(r.images, {})[r.stage] = r
    order = [argv[0] for argv in STAGES]
    return [sorted(merged[n].values(), key=lambda r: order.index(r.stage)) for n in sorted(merged)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="segment and crops workers")
    parser.add_argument("--interval", type=float, default=0.2, help="sampling period, s")
    parser.add_argument("--workdir", type=Path, default=None, help="where projects go")
    parser.add_argument("--keep", action="store_true", help="keep the projects")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=[argv[0] for argv in STAGES],
        default=None,
        help="run only these stages (the others' outputs must be in the --reuse project)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="keep each size's project in <REUSE>/scale-<N> and run in it if it exists",
    )
    parser.add_argument(
        "--tables",
        type=Path,
        nargs="+",
        default=None,
        help="run nothing: print the table and ratios of these --json files (sizes merged)",
    )
    args = parser.parse_args()

    if args.tables:
        runs = merge_runs(run for path in args.tables for run in read_runs(path))
    else:
        print(f"{os.cpu_count()} CPUs; {psutil.virtual_memory().total / 2**30:.0f} GiB")
        print(HEADER, flush=True)
        runs = [run_size(args, n) for n in args.sizes]
    print("\n" + HEADER)
    for results in runs:
        for r in results:
            print(row(r))
    if len(runs) > 1:
        print("\n" + "\n".join(ratio_rows(runs[-2], runs[-1])))
    if args.json:
        document = [[asdict(r) for r in results] for results in runs]
        args.json.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
