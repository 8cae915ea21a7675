#!/usr/bin/env python3
"""torchvision's region proposal network on seeded random inputs: the reference that the harness's
RPN (src/proposals/rpn.rs) is held to, bit for bit where the arithmetic is the same.

It runs torchvision's own pieces, not a re-implementation of them:
  AnchorGenerator                       the anchors of one feature map (3 sizes x 3 aspect ratios)
  RegionProposalNetwork
    .assign_targets_to_anchors          labels (1 / 0 / -1) and each anchor's matched box,
                                        Matcher(0.7, 0.3, allow_low_quality_matches=True)
    .box_coder.encode / .decode         the regression targets, the decoded proposals (weights 1)
    .filter_proposals                   top-k per image, clip, small boxes out, NMS 0.7, top-k
    .compute_loss                       on a given sample (the fg/bg sampler's draw replaced by a
                                        fixed one, since the two sides' random numbers differ)

and writes one JSON object with the inputs and the outputs:

  python3 scripts/rpn_reference.py > tests/fixtures/rpn_torchvision.json

The three images cover the matcher's cases: several boxes, one box too small for any anchor to
reach IoU 0.7 (only its low-quality matches are positive), and none (every anchor background).
`cargo test --test main rpn` compares the harness with the committed file, and with this script
run live when OHEM_PEER_PYTHON names a python with torch and torchvision (scripts/peer-venv.sh).
"""
import json

import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

SIZES = (16.0, 32.0, 64.0)
RATIOS = (0.5, 1.0, 2.0)
STRIDE = 8
GRID = (6, 8)  # feature map H x W
PADDED = (GRID[0] * STRIDE, GRID[1] * STRIDE)
IMAGE_SIZES = [(45, 60), (48, 50), (40, 64)]  # (h, w) of each image before padding
PRE_NMS, POST_NMS, NMS = 300, 100, 0.7


def number(x):
    """A float for JSON: the strings "inf", "-inf" and "nan" where JSON has no number (the regression
    targets of an image without boxes are log(0))."""
    x = float(x)
    return x if x == x and abs(x) != float("inf") else str(x)


def flat(t):
    return [number(x) for x in t.detach().reshape(-1).tolist()]


def main():
    g = torch.Generator().manual_seed(0)
    n = len(IMAGE_SIZES)
    gts = [
        torch.tensor([[4.0, 6.0, 30.0, 28.0], [20.0, 10.0, 52.0, 40.0], [33.5, 2.25, 44.0, 17.5]]),
        torch.tensor([[10.0, 12.0, 15.0, 16.0]]),
        torch.zeros((0, 4)),
    ]
    anchor_gen = AnchorGenerator(sizes=(SIZES,), aspect_ratios=(RATIOS,))
    rpn = RegionProposalNetwork(
        anchor_gen,
        head=None,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": PRE_NMS, "testing": PRE_NMS},
        post_nms_top_n={"training": POST_NMS, "testing": POST_NMS},
        nms_thresh=NMS,
    )
    images = ImageList(torch.zeros((n, 3) + PADDED), IMAGE_SIZES)
    feature = torch.zeros((n, 4) + GRID)
    anchors = anchor_gen(images, [feature])  # per image, identical
    a = anchors[0].shape[0]

    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": b} for b in gts])
    targets = rpn.box_coder.encode(matched, anchors)

    objectness = torch.randn((n, a), generator=g)
    deltas = torch.randn((n * a, 4), generator=g) * 0.3
    proposals = rpn.box_coder.decode(deltas, anchors).view(n, -1, 4)
    boxes, scores = rpn.filter_proposals(proposals, objectness.reshape(-1, 1), IMAGE_SIZES, [a])

    # the loss on a fixed sample: up to 8 positives and 24 negatives of each image, the first ones
    pos_masks, neg_masks = [], []
    for lab in labels:
        pos = torch.zeros_like(lab, dtype=torch.uint8)
        neg = torch.zeros_like(lab, dtype=torch.uint8)
        pos[torch.where(lab >= 1)[0][:8]] = 1
        neg[torch.where(lab == 0)[0][:24]] = 1
        pos_masks.append(pos)
        neg_masks.append(neg)
    rpn.fg_bg_sampler = lambda _labels: (pos_masks, neg_masks)
    loss_obj, loss_box = rpn.compute_loss(objectness.reshape(-1, 1), deltas, labels, targets)

    json.dump(
        {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "sizes": list(SIZES),
            "ratios": list(RATIOS),
            "stride": STRIDE,
            "grid": list(GRID),
            "image_sizes": [list(s) for s in IMAGE_SIZES],
            "pre_nms_top_n": PRE_NMS,
            "post_nms_top_n": POST_NMS,
            "nms": NMS,
            "gt": [flat(b) for b in gts],
            "anchors": flat(anchors[0]),
            "labels": [flat(l) for l in labels],
            "matched": [flat(m) for m in matched],
            "targets": flat(torch.cat(targets)),
            "objectness": flat(objectness),
            "deltas": flat(deltas),
            "proposals": flat(proposals),
            "kept_boxes": [flat(b) for b in boxes],
            "kept_scores": [flat(s) for s in scores],
            "sample_pos": [flat(m) for m in pos_masks],
            "sample_neg": [flat(m) for m in neg_masks],
            "loss_objectness": number(loss_obj),
            "loss_box": number(loss_box),
        },
        __import__("sys").stdout,
    )


if __name__ == "__main__":
    main()
