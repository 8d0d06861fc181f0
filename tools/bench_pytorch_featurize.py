"""PyTorch reference for `cellbench bench featurize`: EfficientNet-Lite0 pooled features (1280 per
image) at 224x224, on the CPU with a given number of threads or on a CUDA GPU, using the same
model definition as tools/reference_logits.py and the bundled weights. fp32 throughout (on CUDA
TF32 is switched off unless --tf32 is given), eval mode, no autograd.

Input: the bundled demo images (assets/demo/bccd, resized to 224x224 and normalised as in
reference_logits.py), cycled to fill the batch; random values when the demo folder is missing.
Each batch is sent from host memory and its features read back, as cellbench does. One warm-up
batch, then --batches timed batches; on CUDA the clock is read after a synchronise.

Needs torch, numpy and pillow (a throwaway venv, or a machine that has them):
    python tools/bench_pytorch_featurize.py --threads 2
    python tools/bench_pytorch_featurize.py --device cuda --json

The assets folder is $CELLBENCH_ASSETS, else assets/ beside tools/. --json prints one line:
    {"kind": "featurize", "device": "...", "batch_size": 32, "batches": 3,
     "warmup_secs": ..., "timed_secs": ..., "images_per_sec": ...}
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_logits as ref  # noqa: E402

IMAGE_SIDE = 224


def assets_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("CELLBENCH_ASSETS") or os.path.join(here, "..", "assets")


def load_backbone():
    """EfficientNet-Lite0 with the bundled (fp16, upcast to fp32) weights, in eval mode."""
    weights = os.path.join(assets_dir(), "weights", "efficientnet_lite0.safetensors")
    state, _metadata = ref.load_safetensors_fp32(weights)
    return ref.load_model(state).eval()


def demo_batch(batch, norm="half"):
    """(inputs [batch,3,224,224], labels [batch], source): the demo images, cycled; random
    inputs and labels when the demo folder is absent."""
    from PIL import Image

    root = os.path.join(assets_dir(), "demo", "bccd")
    files = []
    if os.path.isdir(root):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        for label, c in enumerate(classes):
            for name in sorted(os.listdir(os.path.join(root, c))):
                files.append((os.path.join(root, c, name), label))
    if not files:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, IMAGE_SIDE, IMAGE_SIDE, generator=g) * 2 - 1
        return x, torch.randint(0, 5, (batch,), generator=g), "random inputs"
    xs, ys = [], []
    for i in range(batch):
        path, label = files[i % len(files)]
        img = Image.open(path).convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR)
        xs.append(ref.to_input(img, norm))
        ys.append(label)
    return torch.cat(xs), torch.tensor(ys), "demo images"


def features(model, x):
    """The pooled 1280-d features: stem, the 16 blocks, head conv, global mean (no classifier)."""
    x = F.relu6(model._bn0(model._conv_stem(x)))
    for b in model._blocks:
        x = b(x)
    x = F.relu6(model._bn1(model._conv_head(x)))
    return x.mean(dim=(2, 3))


def setup_device(name, threads, tf32=False):
    """(torch.device, description, synchronise) for `cpu` or `cuda`."""
    torch.set_num_threads(threads)
    version = torch.__version__.split("+")[0]
    if name == "cpu":
        return torch.device("cpu"), f"pytorch {version} cpu, {threads} threads, fp32", lambda: None
    if not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available to this PyTorch")
    set_tf32(tf32)
    torch.backends.cudnn.benchmark = True  # algorithm search happens in the warm-up batch
    dev = torch.device("cuda")
    precision = "fp32 with TF32" if tf32 else "fp32, no TF32"
    desc = f"pytorch {version} cuda: {torch.cuda.get_device_name(dev)}, {precision}"
    return dev, desc, torch.cuda.synchronize


def set_tf32(enabled):
    """Allows or forbids TF32 in CUDA matrix products and cuDNN convolutions (newer PyTorch
    releases spell this `fp32_precision`; older ones `allow_tf32`)."""
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def timed(step, batches, sync):
    """(warm-up seconds, timed seconds): one call of `step`, then `batches` calls."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        step()
    sync()
    return warm, time.perf_counter() - start


def common_args(ap):
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (also for the CPU side on cuda)")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up batch")
    ap.add_argument("--tf32", action="store_true", help="on cuda, allow TF32 (default: strict fp32)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a sentence")


def report(kind, args, device, warm, secs, extra=None, sentence="", unit="batch"):
    n = args.batch * args.batches
    if args.json:
        line = {"kind": kind, "device": device, "batch_size": args.batch, "batches": args.batches}
        line.update(extra or {})
        line.update({"warmup_secs": round(warm, 4), "timed_secs": round(secs, 4),
                     "images_per_sec": round(n / secs, 2)})
        print(json.dumps(line), flush=True)
    else:
        print(f"{kind} [{device}]: {n / secs:.1f} images/s at 224x224{sentence} (batch {args.batch}, "
              f"{args.batches} timed {unit}{'es' if unit.endswith('h') else 's'}, {secs:.2f} s; first {unit} incl. warm-up {warm:.2f} s)",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap)
    args = ap.parse_args()
    args.batches = max(1, args.batches)
    dev, desc, sync = setup_device(args.device, args.threads, args.tf32)
    model = load_backbone().to(dev)
    x, _labels, source = demo_batch(args.batch)

    def step():
        # Like cellbench: the batch goes up from host memory and the features come back.
        f = features(model, x.to(dev)).cpu()
        assert f.shape == (args.batch, 1280), f.shape

    with torch.inference_mode():
        warm, secs = timed(step, args.batches, sync)
    report("featurize", args, desc, warm, secs, {"input": source})


if __name__ == "__main__":
    main()
