"""PyTorch reference for `cellbench bench finetune`: images per second of fine-tuning steps of
EfficientNet-Lite0 at 224x224, on the CPU with a given number of threads or on a CUDA GPU, using
the same model definition as tools/reference_logits.py and the bundled weights.

What is trained is what cellbench trains with `--unfreeze N`: the last N of the 16 MBConv blocks
(`_blocks[16-N:]`), the head convolution (1280 channels) with its batch norm, and a new linear
classifier for the 5 demo classes behind dropout 0.2. The stem and the first 16-N blocks are
frozen (requires_grad False, eval-mode batch norm) and run without autograd, as cellbench runs
its frozen prefix; the trained part is in train mode. One step: send the batch from host memory,
the frozen prefix, forward and backward through the rest, class-weighted cross-entropy, one
AdamW step (cellbench's fine-tune defaults: learning rate 3e-4, weight decay 1e-4), the loss
read back. fp32 throughout (on CUDA TF32 is off unless --tf32 is given).

Input: the bundled demo images preprocessed once (see bench_pytorch_featurize.py), cycled to
fill the batch, with their class labels. cellbench also decodes and augments each batch inside
its clock, on a loader thread ahead of the steps (its JSON reports that work alone as
decode_secs); this tool does not.

One warm-up step, then --batches timed steps:
    python tools/bench_pytorch_finetune.py --threads 2 --batch 8 --batches 2
    python tools/bench_pytorch_finetune.py --device cuda --unfreeze 2 --json
--json prints one line: {"kind": "finetune", "device": ..., "batch_size": ..., "batches": ...,
"unfrozen_blocks": ..., "warmup_secs": ..., "timed_secs": ..., "images_per_sec": ...}
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pytorch_featurize as fz  # noqa: E402

NUM_BLOCKS = 16
CLASSES = 5
LEARNING_RATE = 3e-4
WEIGHT_DECAY = 1e-4
DROPOUT = 0.2


class Finetune(nn.Module):
    """Lite0 split at block `start`: a frozen prefix and a trained rest with a new classifier."""

    def __init__(self, backbone, unfreeze, classes):
        super().__init__()
        self.start = NUM_BLOCKS - min(unfreeze, NUM_BLOCKS)
        self.net = backbone
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(1280, classes)
        for p in self.net.parameters():
            p.requires_grad_(False)
        for m in self.trained_modules():
            for p in m.parameters():
                p.requires_grad_(True)

    def trained_modules(self):
        return [*self.net._blocks[self.start:], self.net._conv_head, self.net._bn1, self.fc]

    def train(self, mode=True):
        super().train(False)  # the frozen prefix keeps its batch-norm statistics
        for m in self.trained_modules() + [self.dropout]:
            m.train(mode)
        return self

    def forward(self, x):
        n = self.net
        with torch.no_grad():
            x = F.relu6(n._bn0(n._conv_stem(x)))
            for b in n._blocks[:self.start]:
                x = b(x)
        for b in n._blocks[self.start:]:
            x = b(x)
        x = F.relu6(n._bn1(n._conv_head(x)))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fz.common_args(ap)
    ap.add_argument("--unfreeze", type=int, default=2, help="last backbone blocks trained (0-16)")
    args = ap.parse_args()
    args.batches = max(1, args.batches)
    args.unfreeze = max(0, min(args.unfreeze, NUM_BLOCKS))
    torch.manual_seed(7)
    dev, desc, sync = fz.setup_device(args.device, args.threads, args.tf32)
    model = Finetune(fz.load_backbone(), args.unfreeze, CLASSES).to(dev).train()
    x, y, source = fz.demo_batch(args.batch)
    counts = torch.bincount(y, minlength=CLASSES).clamp(min=1).float()
    class_weights = (len(y) / (CLASSES * counts)).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def step():
        xb, yb = x.to(dev), y.to(dev)
        loss = F.cross_entropy(model(xb), yb, weight=class_weights)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        value = loss.item()  # read back, as cellbench does each step
        assert value == value, "the loss became NaN"

    warm, secs = fz.timed(step, args.batches, sync)
    trained = sum(p.numel() for p in params)
    fz.report("finetune", args, desc, warm, secs,
              {"unfrozen_blocks": args.unfreeze, "trained_parameters": trained, "input": source},
              sentence=f" of training steps (last {args.unfreeze} blocks and the head trained)",
              unit="step")


if __name__ == "__main__":
    main()
