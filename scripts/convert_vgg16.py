#!/usr/bin/env python3
"""Converts torchvision's ImageNet VGG16 weights into a safetensors file for `model.weights`.

    pip install torch torchvision safetensors
    python3 scripts/convert_vgg16.py vgg16.safetensors

torchvision downloads the weights on first use (this needs internet access, which the
harness itself never does). Only the layers the Fast R-CNN model uses are kept, under
torchvision's own names: `features.<i>.{weight,bias}` (conv1_1 ... conv5_3) and
`classifier.0` / `classifier.3` (fc6, fc7). Then set in a config:

    model:
      backbone: vgg16
      weights: vgg16.safetensors
    input:
      scale: 600
      max_size: 1000
"""
import sys

import torch
import torchvision
from safetensors.torch import save_file


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    model = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    keep = {
        name: tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith("features.") or name.startswith(("classifier.0.", "classifier.3."))
    }
    save_file(keep, sys.argv[1])
    print(f"wrote {len(keep)} tensors to {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
