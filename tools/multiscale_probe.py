#!/usr/bin/env python3
"""Linear probe on multi-scale pooled EfficientNet-Lite features vs the final 1280-d pool.

Run in a throwaway venv (NOT a project dependency):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch numpy pillow scikit-learn
    /tmp/refvenv/bin/python tools/multiscale_probe.py \
        [DATA]                      # default: $CELLBENCH_SHARED/data/bccd/BCCD_cropped
        [--variant lite0] [--safetensors PATH] [--seed 0] [--repeats 1]

DATA is a folder of class sub-folders of images.  Each image is preprocessed as cellbench
does: crop to the bounding box of the pixels with any channel > 24 (the whole image when no
pixel qualifies), squash-resize to the variant's input size (PIL bilinear), x/255, then
(x - 0.5)/0.5, RGB, CHW.  The network is built by tools/reference_logits.py and loaded from
the fp16 safetensors (upcast to fp32).

Features per image (global average pools):
    final   head conv + BN + ReLU6, pooled (1280)
    sN      output of the last block of stage N (lite0: 40, 80, 112, 192, 320 channels after
            blocks 4, 7, 10, 14, 15 of the 16-block table)

Feature sets compared (lite0 channel counts):
    a   final                                  1280
    b   final + s5 + s4                        1280 + 192 + 112
    c   final + s6 + s5 + s4 + s3              1280 + 320 + 192 + 112 + 80
    b*, c*  as b, c with each block rescaled after StandardScaler so that every block has the
            total variance of the 1280-d block (the small blocks weigh as much as the final
            pool in the L2 penalty, instead of in proportion to their width)

Protocol, identical for every set: StratifiedKFold(5, shuffle, seed); per fold,
StandardScaler + LogisticRegression(L-BFGS, multinomial, max_iter 10000) with C and
class_weight (None / balanced) chosen on an inner stratified 80/20 split of the training
side by macro F1, refitted on the whole training side, scored once on the fold.  Per-fold
macro F1 averages over the classes present in the fold's truth or predictions (a class with
3 images is absent from some folds); the pooled numbers use all held-out predictions of the
5 folds together and every class.  "Δ vs a" is the paired per-fold difference to set a.
With --repeats R the whole cross-validation is repeated with seeds seed..seed+R-1 and the
mean of the pooled numbers over repeats is printed as well.

Extraction time: best wall time of --timing-runs (default 2) forward passes over all images
computing only what the set needs (batch 32, CPU unless CUDA is available, torch threads =
CPU count), preprocessing excluded and reported once.  Development tool only; never needed
at run time.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_logits import (  # noqa: E402
    REPO,
    VARIANTS,
    load_model,
    load_safetensors_fp32,
)

from sklearn.exceptions import UndefinedMetricWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold, train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DARK = 24
GRID_C = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
GRID_CW = [None, "balanced"]


def stage_ends(stages):
    """Index of the last block of each stage in the flat block table."""
    ends, n = [], 0
    for *_, repeats in stages:
        n += repeats
        ends.append(n - 1)
    return ends


def preprocess(path, size):
    img = np.asarray(Image.open(path).convert("RGB"))
    mask = (img > DARK).any(axis=2)
    if mask.any():
        rows, cols = np.where(mask.any(axis=1))[0], np.where(mask.any(axis=0))[0]
        img = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    img = Image.fromarray(img).resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def load_dataset(root, size):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith(IMAGE_EXT):
                xs.append(preprocess(os.path.join(root, c, f), size))
                ys.append(ci)
    return np.stack(xs), np.array(ys), classes


@torch.no_grad()
def pooled_features(model, x, taps, final):
    """Global-average pools of the block outputs in `taps` (and of the head if `final`)."""
    out = {}
    x = F.relu6(model._bn0(model._conv_stem(x)))
    last = len(model._blocks) - 1 if final else max(taps)
    for i, b in enumerate(model._blocks[:last + 1]):
        x = b(x)
        if i in taps:
            out[i] = x.mean(dim=(2, 3))
    if final:
        out["final"] = F.relu6(model._bn1(model._conv_head(x))).mean(dim=(2, 3))
    return out


def extract(model, images, taps, final, device, batch=32, runs=1):
    """The pooled features and the best wall time of `runs` passes over all images."""
    best = float("inf")
    for _ in range(runs):
        parts = {}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(0, len(images), batch):
            xb = torch.from_numpy(images[s:s + batch]).to(device)
            for k, v in pooled_features(model, xb, taps, final).items():
                parts.setdefault(k, []).append(v.float().cpu().numpy())
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {k: np.concatenate(v) for k, v in parts.items()}, best


def fit(x, y, c, cw, weights):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, class_weight=cw, max_iter=10000)
    return scaler, model.fit(scaler.transform(x) * weights, y)


def macro_f1(y, p, labels=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return f1_score(y, p, average="macro", labels=labels)


def cross_validate(x, y, weights, seed, folds=5):
    skf = StratifiedKFold(folds, shuffle=True, random_state=seed)
    acc, f1, chosen = [], [], []
    pred = np.empty_like(y)
    for train, test in skf.split(x, y):
        _, counts = np.unique(y[train], return_counts=True)
        strat = y[train] if counts.min() >= 2 else None
        inner, val = train_test_split(train, test_size=0.2, stratify=strat, random_state=seed)
        scaler = StandardScaler().fit(x[inner])
        xi, xv = scaler.transform(x[inner]) * weights, scaler.transform(x[val]) * weights
        best = None
        for cw in GRID_CW:
            for c in GRID_C:
                # Cold start for every C: warm-starting along the C path stops L-BFGS at
                # visibly different points for large C and changes the selection.
                m = LogisticRegression(C=c, class_weight=cw, max_iter=10000).fit(xi, y[inner])
                s = macro_f1(y[val], m.predict(xv))
                if best is None or s > best[0]:
                    best = (s, c, cw)
        _, c, cw = best
        chosen.append((c, cw))
        scaler, m = fit(x[train], y[train], c, cw, weights)
        p = m.predict(scaler.transform(x[test]) * weights)
        pred[test] = p
        acc.append(accuracy_score(y[test], p))
        f1.append(macro_f1(y[test], p))
    labels = np.unique(y)
    return {
        "acc": np.array(acc), "f1": np.array(f1), "chosen": chosen,
        "pooled_acc": accuracy_score(y, pred), "pooled_f1": macro_f1(y, pred, labels),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = os.path.join(
        os.environ.get("CELLBENCH_SHARED", os.path.join(os.path.dirname(REPO), "shared")),
        "data/bccd/BCCD_cropped")
    ap.add_argument("data", nargs="?", default=default_data)
    ap.add_argument("--variant", default="lite0", choices=sorted(VARIANTS))
    ap.add_argument("--safetensors", default=None,
                    help="default: assets/weights/efficientnet_<variant>.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="repeat the CV with seeds seed..seed+repeats-1")
    ap.add_argument("--timing-runs", type=int, default=2,
                    help="extraction passes per set; the fastest is reported")
    ap.add_argument("--cpu", action="store_true", help="extract on the CPU even with CUDA")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", message="The least populated class")

    v = VARIANTS[a.variant]
    st = a.safetensors or os.path.join(REPO, f"assets/weights/efficientnet_{a.variant}.safetensors")
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    sd, _ = load_safetensors_fp32(st)
    model = load_model(sd, a.variant).to(device)

    ends = stage_ends(v["stages"])
    widths = [s[4] for s in v["stages"]]
    if a.variant == "lite0":
        assert ends == [0, 2, 4, 7, 10, 14, 15] and len(model._blocks) == 16, ends
    s3, s4, s5, s6 = ends[3], ends[4], ends[5], ends[6]
    name = {e: f"s{i}({widths[i]})" for i, e in enumerate(ends)}
    sets = [
        ("a", ["final"], False),
        ("b", ["final", s5, s4], False),
        ("c", ["final", s6, s5, s4, s3], False),
        ("b*", ["final", s5, s4], True),
        ("c*", ["final", s6, s5, s4, s3], True),
    ]

    t0 = time.perf_counter()
    images, y, classes = load_dataset(a.data, v["size"])
    t_pre = time.perf_counter() - t0
    counts = np.bincount(y)
    print(f"{a.data}: {len(y)} images, classes "
          + ", ".join(f"{c} {n}" for c, n in zip(classes, counts)))
    print(f"efficientnet-{a.variant} from {os.path.relpath(st, REPO)}, device {device}, "
          f"torch threads {torch.get_num_threads()}; preprocessing {t_pre:.2f} s; "
          f"stage ends (block index): {ends}")

    # Warm-up, then time each set's extraction on its own.
    extract(model, images[:8], {s3, s4, s5, s6}, True, device)
    feats, times = {}, {}
    for key, parts, _ in sets:
        if key in times or key.rstrip("*") in times:
            times[key] = times[key.rstrip("*")]
            continue
        taps = {p for p in parts if p != "final"}
        f, t = extract(model, images, taps, "final" in parts, device, runs=a.timing_runs)
        feats.update(f)
        times[key] = t

    seeds = list(range(a.seed, a.seed + a.repeats))
    results = {}
    for key, parts, balance in sets:
        blocks = [feats[p] for p in parts]
        x = np.concatenate(blocks, axis=1).astype(np.float64)
        d_ref = blocks[0].shape[1]
        weights = np.concatenate([
            np.full(b.shape[1], np.sqrt(d_ref / b.shape[1]) if balance else 1.0)
            for b in blocks])
        desc = " + ".join("final(%d)" % d_ref if p == "final" else name[p] for p in parts)
        results[key] = (desc, x.shape[1], [cross_validate(x, y, weights, s) for s in seeds])
        r = results[key][2][0]
        print(f"  {key:3s} done; chosen (C, class_weight) per fold, seed {seeds[0]}: "
              + ", ".join(f"({c:g}, {cw or 'none'})" for c, cw in r["chosen"]))

    base = results["a"][2][0]
    print()
    print(f"seed {seeds[0]}, stratified 5-fold; mean ± sd over folds; pooled over folds; "
          "paired fold difference vs a")
    hdr = (f"{'set':3s} {'dims':>5s}  {'acc':>13s}  {'macro F1':>13s}  {'pooled acc':>10s}  "
           f"{'pooled F1':>9s}  {'Δacc vs a':>13s}  {'ΔF1 vs a':>13s}  {'extract s':>9s}  features")
    print(hdr)
    print("-" * len(hdr))
    for key, (desc, dims, rs) in results.items():
        r = rs[0]
        da, df = r["acc"] - base["acc"], r["f1"] - base["f1"]
        print(f"{key:3s} {dims:5d}  {r['acc'].mean():.3f} ± {r['acc'].std(ddof=1):.3f}  "
              f"{r['f1'].mean():.3f} ± {r['f1'].std(ddof=1):.3f}  {r['pooled_acc']:10.3f}  "
              f"{r['pooled_f1']:9.3f}  {da.mean():+.3f} ± {da.std(ddof=1):.3f}  "
              f"{df.mean():+.3f} ± {df.std(ddof=1):.3f}  {times[key]:9.2f}  {desc}")
    if len(seeds) > 1:
        print()
        print(f"{len(seeds)} repeats (seeds {seeds[0]}..{seeds[-1]}): pooled numbers, "
              "mean ± sd over repeats; difference vs a, mean ± sd over repeats")
        pa = np.array([r["pooled_acc"] for r in results["a"][2]])
        pf = np.array([r["pooled_f1"] for r in results["a"][2]])
        for key, (desc, dims, rs) in results.items():
            acc = np.array([r["pooled_acc"] for r in rs])
            f1 = np.array([r["pooled_f1"] for r in rs])
            print(f"{key:3s} pooled acc {acc.mean():.3f} ± {acc.std(ddof=1):.3f} "
                  f"(Δ {(acc - pa).mean():+.3f} ± {(acc - pa).std(ddof=1):.3f})   "
                  f"pooled F1 {f1.mean():.3f} ± {f1.std(ddof=1):.3f} "
                  f"(Δ {(f1 - pf).mean():+.3f} ± {(f1 - pf).std(ddof=1):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
