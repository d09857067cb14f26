"""DoomNet's twin in PyTorch CPU eager: the same MLP, float32, the same data and update.

PyTorch is optional and used only by the benchmarks: `load_torch()` returns the module, or
None with a one-line note saying how to get a CPU build.
"""

from __future__ import annotations

import numpy as np

from doomnet.model import DoomNet

INSTALL_HINT = (
    "PyTorch is not installed, so the PyTorch columns are skipped. For them, put a CPU wheel "
    "in a folder and run `make bench TORCH_WHEELS=<folder>`, or `uv pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu` (never the multi-GB CUDA build)."
)


def load_torch():
    """The torch module, or None if it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def twin(torch, model: DoomNet):
    """An `nn.Sequential` of Linear/ReLU layers with DoomNet's weights, float32.

    nn.Linear stores W as (out, in), so DoomNet's W (in, out) is copied transposed.
    """
    layers = []
    for i in range(1, model.n_layers + 1):
        W, b = model.params[f"W{i}"], model.params[f"b{i}"]
        linear = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < model.n_layers:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).float()


def make_optimizer(torch, net, name: str, lr: float):
    """torch.optim's SGD (plain) or Adam with the defaults DoomNet's optimizers use."""
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr)
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    raise ValueError(f"no PyTorch twin for optimizer {name!r}")


def train_step(torch, net, opt):
    """One update on a batch, returning (loss, train accuracy) as DoomNet's step does:
    forward, mean cross-entropy, backward, optimizer step; the accuracy comes from the
    same logits."""
    cross_entropy = torch.nn.functional.cross_entropy

    def step(X, y) -> tuple[float, float]:
        opt.zero_grad(set_to_none=True)
        logits = net(X)  # (N, C)
        loss = cross_entropy(logits, y)
        loss.backward()
        opt.step()
        correct = int((logits.detach().argmax(dim=1) == y).sum())
        return float(loss.detach()), correct / X.shape[0]

    return step


def evaluate(torch, net, X, y, chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy without gradients, in chunks as DoomNet does."""
    nll, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, X.shape[0], chunk):
            logits = net(X[start : start + chunk])
            yc = y[start : start + chunk]
            nll += float(torch.nn.functional.cross_entropy(logits, yc, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yc).sum())
    return nll / X.shape[0], correct / X.shape[0]
