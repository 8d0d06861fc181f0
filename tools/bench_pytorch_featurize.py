"""PyTorch reference for `cellbench bench featurize`: EfficientNet-Lite0 pooled features at
224x224, batch 32, on the CPU with a given number of threads, using the same model definition
as tools/reference_logits.py and the bundled weights.

Run in a throwaway venv with torch, numpy and pillow:
    python tools/bench_pytorch_featurize.py --threads 2
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import reference_logits as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    weights = os.path.join(here, "..", "assets", "weights", "efficientnet_lite0.safetensors")
    state, _metadata = ref.load_safetensors_fp32(weights)
    model = ref.load_model(state).eval()
    x = torch.rand(args.batch, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        features = lambda: model.forward_features(x) if hasattr(model, "forward_features") else model(x)
        start = time.perf_counter()
        features()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.batches):
            features()
        secs = time.perf_counter() - start
    n = args.batch * args.batches
    print(f"pytorch {torch.__version__} cpu ({args.threads} threads): {n / secs:.1f} images/s at 224x224 "
          f"(batch {args.batch}, {args.batches} timed batches, {secs:.2f} s; first batch {warm:.2f} s)")


if __name__ == "__main__":
    main()
