#!/usr/bin/env python3
"""The exact savings of issue 19, measured on the small backbone's forward + backward in the same
libtorch (PyTorch 2.13) as the harness, in one process, interleaved: in-place ReLU, batch norm folded
into the convolutions, channels-last memory format, and their combinations; and two rewrites of the
kernels that `bench_peer.py --profile` counts in the shared floor: 2x2 max pooling as two
max-with-index reductions over a view (the same maxima, the gradient to the first maximum, as
max_pool2d's), and the first convolution (3 input channels) as unfold + matmul.

The network is the small backbone (8 convs of 16-128 channels, frozen batch norm, stride 8) on N = 2
images of 224x298; batch-norm statistics and affine parameters are random but fixed; the gradient is
taken for the conv weights (trainable), as in fine-tuning. Each variant is first checked against the
baseline (max |output difference|, max relative gradient difference), then timed: 5 rounds of 4
iterations, the variants in turn within each round; the median per variant is printed with its ratio
to the baseline's.

  ~/.cache/ohem-harness/peer-venv/bin/python scripts/bench_savings.py [--threads 2]

(the peer's venv: `harness bench samplers --peer` installs it.)
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PLAN = [(3, 16, True), (16, 32, True), (32, 64, False), (64, 64, True), (64, 128, False), (128, 128, True), (128, 128, False), (128, 128, False)]


def build():
    torch.manual_seed(0)
    convs = [nn.Conv2d(i, o, 3, padding=1) for i, o, _ in PLAN]
    bns = [nn.BatchNorm2d(o).eval() for _, o, _ in PLAN]
    for bn in bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
        for p in bn.parameters():
            p.requires_grad_(False)
    return convs, bns


def max_pool_reduce(x):
    """2x2 max pooling as two reductions over a view: along the width, then the height (an odd last
    row or column dropped, as max_pool2d does)."""
    _, _, h, w = x.shape
    x = x[:, :, : h - h % 2, : w - w % 2].unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2))
    return x.max(5).values.max(3).values


def conv_unfold(x, c):
    """A 3x3 convolution (padding 1) as unfold + matmul."""
    n, _, h, w = x.shape
    cols = F.unfold(x, 3, padding=1)  # [n, cin*9, h*w]
    return (c.weight.view(c.out_channels, -1) @ cols + c.bias.view(1, -1, 1)).view(n, c.out_channels, h, w)


def forward(x, convs, bns, fold=False, inplace=False, channels_last=False, pool_reduce=False, conv1_unfold=False):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for k, ((_, _, pool), c, bn) in enumerate(zip(PLAN, convs, bns)):
        if conv1_unfold and k == 0:
            x = bn(conv_unfold(x, c))
        elif fold:
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = c.weight * s.view(-1, 1, 1, 1)
            if channels_last:
                w = w.contiguous(memory_format=torch.channels_last)
            x = F.conv2d(x, w, (c.bias - bn.running_mean) * s + bn.bias, padding=1)
        else:
            x = bn(c(x))
        x = F.relu_(x) if inplace else F.relu(x)
        if pool and k != 5:  # stride 8: no pool after conv 5
            x = max_pool_reduce(x) if pool_reduce else F.max_pool2d(x, 2)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    convs, bns = build()
    weights = [c.weight for c in convs]
    x = torch.randn(2, 3, 224, 298)
    variants = [
        ("baseline", {}),
        ("in-place ReLU", dict(inplace=True)),
        ("batch norm folded", dict(fold=True)),
        ("channels-last", dict(channels_last=True)),
        ("folded + in-place", dict(fold=True, inplace=True)),
        ("all three", dict(fold=True, channels_last=True, inplace=True)),
        ("max pool reductions", dict(pool_reduce=True)),
        ("conv1 unfold+matmul", dict(conv1_unfold=True)),
    ]
    ref = forward(x, convs, bns)
    gref = torch.autograd.grad(ref.sum() * 1e-3, weights)
    print(f"small backbone forward + backward, N = 2 at 224x298, PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, kw in variants:
        y = forward(x, convs, bns, **kw)
        gy = torch.autograd.grad(y.sum() * 1e-3, weights)
        dy = float((y - ref).abs().max().detach())
        dg = max(float(((a - b).abs().max() / b.abs().max()).detach()) for a, b in zip(gy, gref))
        print(f"  {name:<20} max |output difference| {dy:.1e}, max relative gradient difference {dg:.1e}")
    times = {n: [] for n, _ in variants}
    for _ in range(5):
        for name, kw in variants:
            t = time.perf_counter()
            for _ in range(4):
                (forward(x, convs, bns, **kw).sum() * 1e-3).backward()
            times[name].append((time.perf_counter() - t) / 4)
    base = sorted(times["baseline"])[2]
    for name, _ in variants:
        m = sorted(times[name])[2]
        print(f"  {name:<20} {m * 1e3:7.1f} ms/iter (median of 5 rounds)   {m / base:.3f}x the baseline")


if __name__ == "__main__":
    main()
