#!/usr/bin/env python3
"""Test-time augmentation measured on a cross-validation's held-out folds.

Usage:
    python3 tools/tta_cv.py <runs-folder>/cv-<stamp>.json [--cellbench PATH]

For each fold run of the cross-validation, predicts its test side (the images the fold
scored once) with `cellbench predict`, plain and with `--tta`, and prints the pooled accuracy
and macro F1 of both and the time each took. Standard library only.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time


def macro_f1(pairs, labels):
    f1s = []
    for c in labels:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cv_json")
    ap.add_argument("--cellbench", default="cellbench")
    args = ap.parse_args()
    runs_root = os.path.dirname(os.path.abspath(args.cv_json))
    summary = json.load(open(args.cv_json))
    results = {False: [], True: []}
    seconds = {False: 0.0, True: 0.0}
    labels = set()
    with tempfile.TemporaryDirectory() as tmp:
        for run in summary["runs"]:
            run_dir = os.path.join(runs_root, run)
            root = json.load(open(os.path.join(run_dir, "model.json")))["dataset_root"]
            truth = {}
            with open(os.path.join(run_dir, "predictions.csv")) as f:
                for row in csv.DictReader(f):
                    if row["split"] == "test":
                        truth[os.path.join(root, row["path"])] = row["truth"]
            labels.update(truth.values())
            manifest = os.path.join(tmp, f"{run}.csv")
            with open(manifest, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "label"])
                for p, t in truth.items():
                    w.writerow([p, t])
            for tta in (False, True):
                out = os.path.join(tmp, f"{run}-{tta}.csv")
                cmd = [args.cellbench, "predict", run_dir, manifest, "--out", out, "--backend", "cpu"]
                if tta:
                    cmd.append("--tta")
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                seconds[tta] += time.perf_counter() - start
                with open(out) as f:
                    for row in csv.DictReader(f):
                        results[tta].append((truth[row["path"]], row["predicted"]))
    labels = sorted(labels)
    for tta in (False, True):
        pairs = results[tta]
        acc = sum(1 for t, p in pairs if t == p) / len(pairs)
        print(
            f"{'--tta' if tta else 'plain'}: {len(pairs)} held-out images, accuracy {acc:.3f}, "
            f"macro F1 {macro_f1(pairs, labels):.3f}, {seconds[tta]:.1f} s of predict"
        )


if __name__ == "__main__":
    sys.exit(main())
