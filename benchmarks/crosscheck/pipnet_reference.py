"""Reference numbers of the ORIGINAL PIP-Net code (M-Nauta/PIPNet) for tests/test_model_pipnet.py.

Run by hand, never by the tests, with the venv of this project and a checkout of the
original (its pipnet/, features/ and util/ folders; it needs nothing else installed):

    git clone https://github.com/M-Nauta/PIPNet /tmp/pipnet_check/PIPNet
    python benchmarks/crosscheck/pipnet_reference.py /tmp/pipnet_check/PIPNet \
        [--commit HASH] [--out tests/data/pipnet_reference.json]

For each case it draws, from ``torch.Generator().manual_seed(seed)`` in this order,

    features  = randn(2B, C, h, w) * 2      (rows :B view a, rows B: view b)
    conv_w    = randn(P, C, 1, 1) * 0.1     (only when P != C: the 1x1 add-on conv)
    conv_b    = randn(P) * 0.1
    weight    = randn(K, P) * 0.5 + 0.5     (some negative: the forward's relu matters)
    labels    = randint(0, K, (B,))

builds the original's layers with ``pipnet.pipnet.get_network`` (args: resnet18 trunk, no
pretrained weights, ``num_features`` P or 0, no bias; the trunk is then replaced by
nn.Identity, so the inputs are feature maps), copies the drawn weights in (normalization
multiplier 2, the original's init) and records: the forward on both views (logits, pooled;
``inference=True``: logits, pooled), and the losses through ``pipnet.train.calculate_loss``
(EPS 1e-8 as ``train_pipnet`` passes it, criterion NLLLoss mean): align alone (pretrain,
align weight 1, tanh 0), tanh alone, class alone (finetune, weight 1), and the totals of
pretraining epoch 3 of 10 (align 0.3, tanh 5), of training (5, 2, 2) and of fine-tuning (2),
and the (sum, absolute sum) of the gradient w.r.t. the feature maps of the training total
and of the align loss alone (its stop-gradient halves).
The identity case (P = C = 16) uses get_network's softmax add-on with the original's
NonNegLinear(16, K).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
CASES = [
    {"name": "conv", "seed": 0, "B": 2, "C": 512, "P": 8, "K": 4, "h": 3, "w": 3},
    {"name": "identity", "seed": 1, "B": 3, "C": 16, "P": 16, "K": 3, "h": 2, "w": 2},
]


def draw(case: dict) -> dict[str, torch.Tensor]:
    """The inputs of one case, in the documented order."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, c, p, k = case["B"], case["C"], case["P"], case["K"]
    out = {"features": torch.randn(2 * b, c, case["h"], case["w"], generator=gen) * 2}
    if p != c:
        out["conv_w"] = torch.randn(p, c, 1, 1, generator=gen) * 0.1
        out["conv_b"] = torch.randn(p, generator=gen) * 0.1
    out["weight"] = torch.randn(k, p, generator=gen) * 0.5 + 0.5
    out["labels"] = torch.randint(0, k, (b,), generator=gen)
    return out


def original_net(case: dict, inputs: dict, pipnet_module) -> nn.Module:
    """The original's PIPNet on feature maps, with the drawn weights."""
    conv = case["P"] != case["C"]
    args = SimpleNamespace(
        net="resnet18", disable_pretrained=True, num_features=case["P"] if conv else 0, bias=False
    )
    _, add_on, pool, classifier, _ = pipnet_module.get_network(case["K"], args)
    if not conv:
        classifier = pipnet_module.NonNegLinear(case["P"], case["K"], bias=False)
    with torch.no_grad():
        if conv:
            add_on[0].weight.copy_(inputs["conv_w"])
            add_on[0].bias.copy_(inputs["conv_b"])
        classifier.weight.copy_(inputs["weight"])
        classifier.normalization_multiplier.fill_(2.0)
    net = pipnet_module.PIPNet(
        case["K"],
        case["P"],
        nn.Identity(),
        SimpleNamespace(num_features=args.num_features),
        add_on,
        pool,
        classifier,
    )
    return net.eval()


def losses(net: nn.Module, inputs: dict, train_module) -> dict[str, float]:
    """Loss values through the original's calculate_loss."""
    feats, labels = inputs["features"], inputs["labels"]
    multiplier = net._classification.normalization_multiplier
    criterion = nn.NLLLoss(reduction="mean")

    def loss_of(x: torch.Tensor, align_w: float, t_w: float, cl_w: float, phase: str):
        proto_features, pooled, out = net(x)
        pretrain, finetune = phase == "pretrain", phase == "finetune"
        loss, _ = train_module.calculate_loss(
            proto_features, pooled, out, labels, align_w, t_w, 0.0, cl_w, multiplier,
            pretrain, finetune, criterion, None, print=False, EPS=1e-8,
        )  # fmt: skip
        return loss

    def run(align_w: float, t_w: float, cl_w: float, phase: str) -> float:
        return loss_of(feats, align_w, t_w, cl_w, phase).detach().item()

    def feature_grad(align_w: float, t_w: float, cl_w: float) -> list[float]:
        """(sum, abs sum) of the gradient of a training loss w.r.t. the feature maps."""
        x = feats.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(x, align_w, t_w, cl_w, "train"), x)
        return [grad.double().sum().item(), grad.double().abs().sum().item()]

    return {
        "grad_train_features": feature_grad(5.0, 2.0, 2.0),
        "grad_align_features": feature_grad(1.0, 0.0, 0.0),
        "align": run(1.0, 0.0, 0.0, "pretrain"),
        "tanh": run(0.0, 1.0, 0.0, "pretrain"),
        "classification": run(0.0, 0.0, 1.0, "finetune"),
        "total_pretrain_epoch3_of10": run(3 / 10, 5.0, 0.0, "pretrain"),
        "total_train": run(5.0, 2.0, 2.0, "train"),
        "total_finetune": run(0.0, 0.0, 2.0, "finetune"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, help="checkout of M-Nauta/PIPNet")
    parser.add_argument("--commit", default="", help="the original's commit, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "tests/data/pipnet_reference.json")
    opts = parser.parse_args()
    sys.path.insert(0, str(opts.original.resolve()))
    from pipnet import pipnet as pipnet_module  # the original's files
    from pipnet import train as train_module

    records = []
    for case in CASES:
        inputs = draw(case)
        net = original_net(case, inputs, pipnet_module)
        with torch.no_grad():
            maps, pooled, logits = net(inputs["features"])
            _, pooled_inf, logits_inf = net(inputs["features"], inference=True)
        record = dict(case)
        record["outputs"] = {
            "logits": logits.tolist(),
            "pooled": pooled.tolist(),
            "logits_inference": logits_inf.tolist(),
            "pooled_inference": pooled_inf.tolist(),
            "maps_sum": float(maps.double().sum()),
            "maps_max": float(maps.max()),
        }
        record["losses"] = losses(net, inputs, train_module)
        records.append(record)
    meta = {
        "source": "github.com/M-Nauta/PIPNet (pipnet/pipnet.py, pipnet/train.py)",
        "commit": opts.commit,
        "torch": torch.__version__,
        "script": "benchmarks/crosscheck/pipnet_reference.py",
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"meta": meta, "cases": records}, indent=1) + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
