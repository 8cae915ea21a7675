#!/usr/bin/env python3
"""The peer of `harness bench samplers`: the same Fast R-CNN training step in PyTorch + torchvision.

Builds the same network as the harness's `small` backbone (8 conv + batch norm + ReLU, 16-128
channels, max pools after convs 1, 2, 4 and 6; stride 8 drops the last pool), fc6/fc7 of --fc-dim
units, and torchvision's `roi_pool` (7x7) and `nms`. It times the four step kinds on the same shapes:
N = 2 images, B = 128 RoIs, --proposals random proposals per image, plus ground truth:

  fixed_ratio  25% foreground (IoU >= 0.5), background IoU in [0.1, 0.5)
  ohem         read-only: a no-grad head over all RoIs, per-RoI loss (cls + smooth L1 for
               foreground), NMS 0.7 over (RoI, loss) per image, the top B/N per image backpropagated
  ohem_masked  every RoI forward and backward, the loss of the unselected ones zeroed
  all          every RoI with IoU >= 0, up to 2048 per minibatch

and prints one JSON object: {"device", "threads", "torch", "torchvision", "steps": {kind: s/iter},
"peak_mib": {kind: peak RSS on the CPU, the allocator's peak on CUDA, in MiB}}.

  python3 scripts/bench_peer.py [--proposals 2000] [--iters 5] [--device cpu] [--stride 16]

--shapes HxW,HxW,... gives each iteration's input size, the warm-up first (the padded batch shapes
that the harness's step runs, which `harness bench samplers` passes); otherwise every iteration is
--size.

--profile records each step kind's timed iterations with torch.profiler (CPU ops) and prints
instead {"device", "threads", "torch", "torchvision", "profile": {kind: {"wall_s", "iters",
"events": [[name, thread, start_us, end_us], ...]}}}. The step's stages are marked with
record_function scopes of the names the harness's step uses (ohem::assign, ohem::select,
ohem::roi_pool, ohem::loss), so that `harness bench samplers --profile --peer` puts both sides'
ops into the same families (src/bench/profile.rs).

--detector faster_rcnn puts torchvision's RegionProposalNetwork (AnchorGenerator, RPNHead,
Matcher, BalancedPositiveNegativeSampler, filter_proposals) on the same backbone, with the --anchor-*
and --rpn-* settings the harness passes from its model.rpn: its training-time proposals replace the
random ones, the ground truth joins them as in the Fast R-CNN step, and its two losses join the
head's (approximate joint training, as torchvision's FasterRCNN trains). The RoI head and the four
step kinds are the ones above. The JSON then also gives "rois_per_image": {kind: the RoIs per image
before sampling, proposals and ground truth, averaged over the timed iterations}.

Run it through `harness bench samplers --peer`, which installs torch and torchvision into a venv
under the project's cache on first use (scripts/peer-venv.sh) and prints both side by side.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import box_iou, nms, roi_pool


def make_rpn(channels, a):
    """torchvision's region proposal network over one feature map of `channels`, with the harness's
    model.rpn settings (anchor sizes x aspect ratios, IoU thresholds, anchors sampled, proposals kept)."""
    sizes = tuple(float(v) for v in a.anchor_sizes.split(","))
    ratios = tuple(float(v) for v in a.aspect_ratios.split(","))
    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    return RegionProposalNetwork(
        gen,
        RPNHead(channels, len(sizes) * len(ratios)),
        fg_iou_thresh=a.rpn_fg_iou,
        bg_iou_thresh=a.rpn_bg_iou,
        batch_size_per_image=a.rpn_batch,
        positive_fraction=a.rpn_positive_fraction,
        pre_nms_top_n={"training": a.rpn_pre_nms, "testing": a.rpn_pre_nms},
        post_nms_top_n={"training": a.rpn_post_nms, "testing": a.rpn_post_nms},
        nms_thresh=a.rpn_nms,
    )


class Vgg16(nn.Module):
    """torchvision's VGG16 without the last max pool (stride 16), fc6/fc7 of 4096, conv1_x and conv2_x frozen."""

    def __init__(self, classes, fc_dim):
        super().__init__()
        self.features = torchvision.models.vgg16(weights=None).features[:30]
        for i in (0, 2, 5, 7):
            for p in self.features[i].parameters():
                p.requires_grad_(False)
        self.fc = nn.Sequential(nn.Linear(512 * 49, fc_dim), nn.ReLU(inplace=True), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(fc_dim, classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * classes)
        self.scale = 1.0 / 16

    def head(self, feats, rois):
        x = roi_pool(feats, rois, (7, 7), self.scale).flatten(1)
        x = self.fc(x)
        return self.cls_score(x), self.bbox_pred(x)


class Small(nn.Module):
    """The harness's `small` backbone with fc6/fc7 and the two outputs."""

    def __init__(self, classes, fc_dim, stride, freeze_bn):
        super().__init__()
        plan = [(3, 16, True), (16, 32, True), (32, 64, False), (64, 64, True), (64, 128, False), (128, 128, True), (128, 128, False), (128, 128, False)]
        layers = []
        for i, (cin, cout, pool) in enumerate(plan):
            bn = nn.BatchNorm2d(cout)
            if freeze_bn:
                bn.eval()
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), bn, nn.ReLU(inplace=True)]
            if pool and not (stride == 8 and i == 5):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.freeze_bn = freeze_bn
        self.fc = nn.Sequential(nn.Linear(128 * 49, fc_dim), nn.ReLU(inplace=True), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(fc_dim, classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * classes)
        self.scale = 1.0 / stride

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.features:
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def head(self, feats, rois):
        x = roi_pool(feats, rois, (7, 7), self.scale).flatten(1)
        x = self.fc(x)
        return self.cls_score(x), self.bbox_pred(x)


def encode(rois, gt):
    w, h = rois[:, 2] - rois[:, 0] + 1, rois[:, 3] - rois[:, 1] + 1
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    dx = (gt[:, 0] + 0.5 * gw - rois[:, 0] - 0.5 * w) / w
    dy = (gt[:, 1] + 0.5 * gh - rois[:, 1] - 0.5 * h) / h
    return torch.stack([dx / 0.1, dy / 0.1, torch.log(gw / w) / 0.2, torch.log(gh / h) / 0.2], 1)


def per_roi_losses(logits, deltas, labels, targets, k):
    cls = F.cross_entropy(logits, labels, reduction="none")
    slot = (labels - 1).clamp(min=0)
    pred = deltas.view(-1, k, 4).gather(1, slot.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
    loc = F.smooth_l1_loss(pred, targets, reduction="none", beta=1.0).sum(1) * (labels > 0).float()
    return cls, loc


def make_inputs(n_props, device, gen, h, w):
    """Two h x w images, n_props random proposals each (as the harness bench draws them), 3 objects each."""
    images = torch.randn(2, 3, h, w, generator=gen).to(device)
    per_image = []
    for _ in range(2):
        x = torch.rand(n_props, generator=gen) * (w - 9) + 1
        y = torch.rand(n_props, generator=gen) * (h - 9) + 1
        bw = torch.rand(n_props, generator=gen) * (w * 0.6 - 8) + 8
        bh = torch.rand(n_props, generator=gen) * (h * 0.6 - 8) + 8
        props = torch.stack([x, y, (x + bw).clamp(max=w - 1), (y + bh).clamp(max=h - 1)], 1)
        gx = torch.rand(3, generator=gen) * (w - 80)
        gy = torch.rand(3, generator=gen) * (h - 80)
        gs = torch.rand(3, generator=gen) * 60 + 16
        gt = torch.stack([gx, gy, gx + gs, gy + gs], 1)
        labels = torch.randint(1, 7, (3,), generator=gen)
        per_image.append((props.to(device), gt.to(device), labels.to(device)))
    return images, per_image


def assign(props, gt, gt_labels):
    rois = torch.cat([props, gt], 0)
    iou = box_iou(rois, gt)
    max_iou, arg = iou.max(1)
    labels = gt_labels[arg] * (max_iou >= 0.5).long()
    return rois, max_iou, labels, encode(rois, gt[arg])


def sample_where(mask, k, gen):
    idx = mask.nonzero().squeeze(1)
    if idx.numel() > k:
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:k].to(idx.device)]
    return idx


def step(model, opt, images, per_image, kind, gen, k, rois_seen=None):
    from torch.profiler import record_function
    feats = model.features(images)
    rpn_loss = None
    if getattr(model, "rpn", None) is not None:
        # Faster R-CNN: the RPN's training-time proposals replace the given ones
        with record_function("ohem::rpn"):
            h, w = images.shape[-2:]
            image_list = ImageList(images, [(h, w)] * images.shape[0])
            boxes, rpn_losses = model.rpn(image_list, {"0": feats}, [{"boxes": g} for _, g, _ in per_image])
            rpn_loss = rpn_losses["loss_objectness"] + rpn_losses["loss_rpn_box_reg"]
            per_image = [(b, g, l) for b, (_, g, l) in zip(boxes, per_image)]
    with record_function("ohem::assign"):
        assigned = [assign(p, g, l) for p, g, l in per_image]
        rois = torch.cat([torch.cat([torch.full((a[0].shape[0], 1), float(b), device=a[0].device), a[0]], 1) for b, a in enumerate(assigned)])
        labels = torch.cat([a[2] for a in assigned])
        targets = torch.cat([a[3] for a in assigned])
    sizes = [a[0].shape[0] for a in assigned]
    if rois_seen is not None:
        rois_seen.append(sum(sizes) / len(sizes))
    offsets = [0, sizes[0]]
    per = 64

    def ohem_select(cls, loc):
        with record_function("ohem::select"):
            picked = []
            for b, a in enumerate(assigned):
                loss = (cls + loc)[offsets[b]:offsets[b] + sizes[b]]
                keep = nms(a[0], loss, 0.7)[:per]
                picked.append(keep + offsets[b])
            return torch.cat(picked)

    def losses(logits, deltas, labels, targets):
        with record_function("ohem::loss"):
            return per_roi_losses(logits, deltas, labels, targets, k)

    def picked(sel):
        with record_function("ohem::select"):
            return rois[sel], labels[sel], targets[sel]

    if kind == "fixed_ratio" or kind == "all":
        with record_function("ohem::select"):
            picks = []
            for b, a in enumerate(assigned):
                max_iou = a[1]
                if kind == "fixed_ratio":
                    fg = sample_where(max_iou >= 0.5, 16, gen)
                    bg = sample_where((max_iou < 0.5) & (max_iou >= 0.1), per - fg.numel(), gen)
                    picks.append(torch.cat([fg, bg]) + offsets[b])
                else:
                    picks.append(sample_where(max_iou >= 0.0, 1024, gen) + offsets[b])
            sel = torch.cat(picks)
        sel_rois, sel_labels, sel_targets = picked(sel)
        logits, deltas = model.head(feats, sel_rois)
        cls, loc = losses(logits, deltas, sel_labels, sel_targets)
    elif kind == "ohem":
        with torch.no_grad():
            logits, deltas = model.head(feats.detach(), rois)
            cls, loc = losses(logits, deltas, labels, targets)
        sel = ohem_select(cls, loc)
        sel_rois, sel_labels, sel_targets = picked(sel)
        logits, deltas = model.head(feats, sel_rois)
        cls, loc = losses(logits, deltas, sel_labels, sel_targets)
    elif kind == "ohem_masked":
        logits, deltas = model.head(feats, rois)
        cls, loc = losses(logits, deltas, labels, targets)
        sel = ohem_select(cls.detach(), loc.detach())
        with record_function("ohem::loss"):
            mask = torch.zeros_like(cls)
            mask[sel] = 1.0
            cls, loc = cls * mask, loc * mask
    n = sel.numel()
    with record_function("ohem::loss"):
        loss = cls.sum() / n + loc.sum() / n
    if rpn_loss is not None:
        loss = loss + rpn_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def reset_peak(device):
    """Resets the peak memory before a step kind, as `harness bench samplers` does: on the CPU the
    process's peak RSS (VmHWM, through /proc/self/clear_refs), on CUDA the allocator's peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def read_peak(device):
    """The peak since reset_peak, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def profile_kind(model, opt, inputs, kind, gen, k):
    """The profiler's CPU events of inputs[1:] (inputs[0] warms up), and their wall time."""
    from torch.profiler import ProfilerActivity, profile
    step(model, opt, *inputs[0], kind, gen, k)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for images, per_image in inputs[1:]:
            step(model, opt, images, per_image, kind, gen, k)
        wall = time.perf_counter() - t
    events = [[e.name, e.thread, e.time_range.start, e.time_range.end] for e in prof.events()
              if e.device_type == torch.autograd.DeviceType.CPU]
    return {"wall_s": wall, "iters": len(inputs) - 1, "events": events}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proposals", type=int, default=2000)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fc-dim", type=int, default=512)
    ap.add_argument("--stride", type=int, default=16, choices=[8, 16])
    ap.add_argument("--freeze-bn", action="store_true", help="batch norm frozen, as when fine-tuning from pre-trained weights")
    ap.add_argument("--kinds", default="fixed_ratio,ohem,ohem_masked,all")
    ap.add_argument("--backbone", default="small", choices=["small", "vgg16"])
    ap.add_argument("--size", default="224x288", help="input height x width")
    ap.add_argument("--shapes", default="", help="each iteration's input HxW, the warm-up first (overrides --size)")
    ap.add_argument("--profile", action="store_true", help="record each kind's ops with torch.profiler and print the events instead of the timings")
    ap.add_argument("--detector", default="fast_rcnn", choices=["fast_rcnn", "faster_rcnn"], help="faster_rcnn: torchvision's RPN proposes the RoIs")
    ap.add_argument("--anchor-sizes", default="16,32,64")
    ap.add_argument("--aspect-ratios", default="0.5,1,2")
    ap.add_argument("--rpn-fg-iou", type=float, default=0.7)
    ap.add_argument("--rpn-bg-iou", type=float, default=0.3)
    ap.add_argument("--rpn-batch", type=int, default=256)
    ap.add_argument("--rpn-positive-fraction", type=float, default=0.5)
    ap.add_argument("--rpn-pre-nms", type=int, default=2000, help="proposals kept per image before NMS (training)")
    ap.add_argument("--rpn-post-nms", type=int, default=2000, help="proposals kept per image after NMS (training)")
    ap.add_argument("--rpn-nms", type=float, default=0.7)
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    k = 6
    h, w = (int(v) for v in a.size.split("x"))
    model = Vgg16(k, a.fc_dim) if a.backbone == "vgg16" else Small(k, a.fc_dim, a.stride, a.freeze_bn)
    if a.detector == "faster_rcnn":
        model.rpn = make_rpn(512 if a.backbone == "vgg16" else 128, a)
    model = model.to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=5e-4)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")] if a.shapes else [(h, w)] * (a.iters + 1)
    if len(shapes) != a.iters + 1:
        ap.error(f"--shapes gives {len(shapes)} sizes; --iters {a.iters} needs {a.iters + 1} (the warm-up first)")
    inputs = [make_inputs(a.proposals, device, gen, sh, sw) for sh, sw in shapes]
    settings = torch.__config__.parallel_info() + f"mkldnn enabled : {str(torch.backends.mkldnn.enabled).lower()}\n"
    if a.profile:
        profile = {kind: profile_kind(model, opt, inputs, kind, gen, k) for kind in a.kinds.split(",")}
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "torchvision": torchvision.__version__, "settings": settings, "profile": profile}))
        return
    steps = {}
    peak_mib = {}
    rois_per_image = {}
    for kind in a.kinds.split(","):
        reset = reset_peak(device)
        total = 0.0
        seen = []
        for it, (images, per_image) in enumerate(inputs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(model, opt, images, per_image, kind, gen, k, seen if it > 0 else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it > 0:  # the first iteration is a warm-up
                total += time.perf_counter() - t
        steps[kind] = total / a.iters
        peak_mib[kind] = read_peak(device) if reset else None
        rois_per_image[kind] = sum(seen) / len(seen)
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__, "torchvision": torchvision.__version__,
                      "backbone": a.backbone, "size": a.size, "proposals": a.proposals, "stride": a.stride, "fc_dim": a.fc_dim, "freeze_bn": a.freeze_bn, "detector": a.detector, "steps": steps,
                      "peak_mib": peak_mib, "rois_per_image": rois_per_image, "settings": settings}))


if __name__ == "__main__":
    main()
