"""Reference numbers of the ORIGINAL ProtoPool code for tests/test_model_protopool.py.

Run by hand (the tests only read its output), with a checkout of github.com/gmum/ProtoPool
(made at commit 2bd42882282fd309b3b70faa62a73c3c88cddd56) outside this repository:

    python benchmarks/crosscheck/protopool_reference.py /path/to/ProtoPool \
        [--out tests/data/protopool_reference.json]

CPU only, a second. What runs from the checkout, unchanged:

* model.py: ``PrototypeChooser`` (arch resnet18, not pretrained, last layer on), with its
  add-on output replaced by a given feature map and its prototypes, slot presence and
  last layer set to given values; its ``forward`` gives the distances, the min distances,
  the presence (softmax at scale 0, Gumbel-softmax under a seed at a scale > 0, and
  scale 1e4 as the original evaluates) and the logits.
* main.py, read as source (importing it needs cv2, tensorboard, a GPU): the function
  ``dist_loss`` (cluster / separation), and from ``learn_model`` the statements of the
  Gumbel schedule (``start_val`` ... ``lambda1``), of the orthogonality loss (the first
  ``if args.pp_ortho:`` block and its initialisation) and of the L1 term, are taken out
  with ``ast`` and executed with ``.cuda()`` removed.

The inputs are drawn from fixed seeds and stored with the outputs in the JSON, so the
test needs neither the checkout nor the same random generator.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import torch

K, S, P, D, B, H, W = 3, 2, 7, 5, 4, 3, 3
INPUT_SEED, GUMBEL_SEED, HARD_SEED = 0, 123, 7
GUMBEL_EPOCH, GUMBEL_TIME = 3, 30
LABELS = [0, 2, 1, 2]


def make_inputs() -> dict[str, torch.Tensor]:
    """Feature map, prototypes, raw presence in the original's (K, P, S) layout, last layer."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return {
        "features": torch.rand(B, D, H, W, generator=gen),
        "prototypes": torch.rand(P, D, generator=gen),
        "presence_kps": 0.02 * torch.randn(K, P, S, generator=gen),  # ~ xavier std on CUB
        "last_layer": torch.randn(K, K * S, generator=gen),
    }


def learn_model_source(main_py: Path) -> tuple[str, ast.FunctionDef, ast.Module]:
    text = main_py.read_text()
    tree = ast.parse(text)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "learn_model")
    return text, fn, tree


def extract(text: str, nodes: list[ast.stmt]) -> str:
    """The source of the statements, each dedented, with .cuda() calls removed."""
    segments = [textwrap.dedent(ast.get_source_segment(text, n, padded=True)) for n in nodes]
    return "\n".join(segments).replace(".cuda()", "")


def find_statements(fn: ast.FunctionDef, want) -> list[ast.stmt]:
    """Statements of the function (at any depth) matching ``want``: per key the first in the
    source, in source order."""
    found: dict[str, ast.stmt] = {}
    for node in ast.walk(fn):
        key = want(node)
        if key is not None and (key not in found or node.lineno < found[key].lineno):
            found[key] = node
    return [found[k] for k in sorted(found, key=lambda k: found[k].lineno)]


def assigned_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def original_schedule(text: str, fn: ast.FunctionDef, epochs: range) -> list[float]:
    names = {"start_val", "end_val", "epoch_interval", "alpha"}

    def want(node: ast.AST) -> str | None:
        if assigned_name(node) in names:
            return assigned_name(node)
        if isinstance(node, ast.FunctionDef) and node.name == "lambda1":
            return "lambda1"
        return None

    import numpy as np

    ns = {"args": SimpleNamespace(gumbel_time=GUMBEL_TIME), "np": np}
    exec(extract(text, find_statements(fn, want)), ns)
    return [float(ns["lambda1"](e)) for e in epochs]


def original_orthogonality(text: str, fn: ast.FunctionDef, presence_kps: torch.Tensor) -> float:
    def want(node: ast.AST) -> str | None:
        if assigned_name(node) == "orthogonal_loss":
            return "init"
        if isinstance(node, ast.If) and ast.unparse(node.test) == "args.pp_ortho":
            return "block"
        return None

    module = SimpleNamespace(proto_presence=presence_kps)
    ns = {
        "torch": torch,
        "args": SimpleNamespace(pp_ortho=True, num_descriptive=S, num_classes=K),
        "model_multi": SimpleNamespace(module=module),
    }
    exec(extract(text, find_statements(fn, want)), ns)
    return float(ns["orthogonal_loss"].reshape(()))


def original_l1(text: str, fn: ast.FunctionDef, model) -> float:
    def want(node: ast.AST) -> str | None:
        return assigned_name(node) if assigned_name(node) in ("l1_mask", "l1") else None

    ns = {"torch": torch, "model": model}
    exec(extract(text, find_statements(fn, want)), ns)
    return float(ns["l1"].detach())


def original_dist_loss(tree: ast.Module, text: str):
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "dist_loss")
    ns = {"torch": torch}
    exec(extract(text, [node]), ns)
    return ns["dist_loss"]


def build_original(checkout: Path, inputs: dict[str, torch.Tensor]):
    sys.path.insert(0, str(checkout))
    from model import PrototypeChooser  # the original's model.py

    torch.manual_seed(0)
    model = PrototypeChooser(
        num_prototypes=P,
        num_descriptive=S,
        num_classes=K,
        arch="resnet18",
        pretrained=False,
        proto_depth=D,
        use_last_layer=True,
    )
    with torch.no_grad():
        model.prototype_vectors.copy_(inputs["prototypes"].reshape(P, D, 1, 1))
        model.proto_presence.copy_(inputs["presence_kps"])
        model.last_layer.weight.copy_(inputs["last_layer"])
    model.conv_features = lambda x: inputs["features"]
    return model.eval()


def run_forward(model, scale: float, seed: int | None) -> dict[str, list]:
    if seed is not None:
        torch.manual_seed(seed)
    dummy = torch.zeros(B, 3, 8, 8)
    with torch.no_grad():
        logits, min_d, presence = model(dummy, gumbel_scale=scale)
    return {
        "scale": scale,
        "seed": seed,
        "logits": logits,
        "min_distances": min_d,
        "presence_kps": presence,
    }


def compute(checkout: Path) -> dict:
    inputs = make_inputs()
    text, fn, tree = learn_model_source(checkout / "main.py")
    model = build_original(checkout, inputs)
    dist_loss = original_dist_loss(tree, text)
    schedule = original_schedule(text, fn, range(0, GUMBEL_TIME + 6))
    forwards = {
        "softmax": run_forward(model, 0, None),
        "gumbel": run_forward(model, schedule[GUMBEL_EPOCH], GUMBEL_SEED),
        "hard": run_forward(model, 10e3, HARD_SEED),
    }
    hard = forwards["hard"]["presence_kps"]
    argmax = torch.nn.functional.one_hot(inputs["presence_kps"].argmax(1), P).transpose(1, 2)
    assert torch.allclose(hard, argmax.float(), atol=1e-6), "scale 1e4 gave no argmax here"
    losses = {}
    for name, out in forwards.items():
        pp = out["presence_kps"][LABELS]
        losses[name] = {
            "cluster": float(dist_loss(model, out["min_distances"], pp, S)),
            "separation": float(dist_loss(model, out["min_distances"], 1 - pp, P - S)),
        }
    with torch.no_grad():
        distances = model.prototype_distances(torch.zeros(B, 3, 8, 8))
    return {
        "about": "benchmarks/crosscheck/protopool_reference.py on gmum/ProtoPool",
        "torch": torch.__version__,
        "shapes": {"K": K, "S": S, "P": P, "D": D, "B": B, "H": H, "W": W},
        "seeds": {"input": INPUT_SEED, "gumbel": GUMBEL_SEED, "hard": HARD_SEED},
        "labels": LABELS,
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        "distances": distances.tolist(),
        "forward": {
            k: {n: v.tolist() if torch.is_tensor(v) else v for n, v in o.items()}
            for k, o in forwards.items()
        },
        "losses": losses,
        "orthogonality": original_orthogonality(text, fn, inputs["presence_kps"]),
        "l1": original_l1(text, fn, model),
        "gumbel_schedule": {
            "gumbel_time": GUMBEL_TIME,
            "epoch_for_gumbel": GUMBEL_EPOCH,
            "values": schedule,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of gmum/ProtoPool")
    parser.add_argument("--out", type=Path, default=Path("tests/data/protopool_reference.json"))
    args = parser.parse_args()
    result = compute(args.checkout.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
