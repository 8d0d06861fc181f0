#!/usr/bin/env python3
"""Reference linear probe (scikit-learn) on the features cellbench exports.

Reproduces the comparison of cellbench's default probe with a tuned scikit-learn probe on
exactly the same features and folds:

    cellbench train DATA --folds 5 --export-features /tmp/features.csv
    python3 -m venv /tmp/probe-venv && /tmp/probe-venv/bin/pip install scikit-learn numpy
    /tmp/probe-venv/bin/python tools/probe_reference.py /tmp/features.csv

Per fold: StandardScaler + LogisticRegression (multinomial, L-BFGS), C chosen on an inner
stratified 80/20 split of the fold's training side by accuracy (or, with
`--select cv-logloss`, C and class weighting by the pooled log loss of 3 inner folds),
refitted on the whole training side, scored once on the fold. Development tool only; never needed at run time.
"""

import argparse
import csv
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    first = header.index("f0")
    labels = np.array([r[1] for r in rows])
    folds = [r[3] for r in rows]
    x = np.array([[float(v) for v in r[first:]] for r in rows])
    return x, labels, folds


def fit(x, y, c, class_weight):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=5000, class_weight=class_weight)
    return scaler, model.fit(scaler.transform(x), y)


def choose_by_inner_log_loss(x, y, grid, seed):
    """C and class weighting with the lowest log loss of the pooled held-out predictions of
    3 stratified inner folds (standardised on each inner training part)."""
    labels = np.unique(y)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(x, y))
    best = None
    for weighting in [None, "balanced"]:
        for c in grid:
            loss = 0.0
            for inner, held in folds:
                scaler, m = fit(x[inner], y[inner], c, weighting)
                p = np.full((len(held), len(labels)), 1e-12)
                p[:, np.searchsorted(labels, m.classes_)] = m.predict_proba(
                    scaler.transform(x[held])
                )
                truth = np.searchsorted(labels, y[held])
                loss -= np.log(np.maximum(p[np.arange(len(held)), truth], 1e-12)).sum()
            loss /= len(y)
            if best is None or loss < best[0]:
                best = (loss, c, weighting)
    return best[1], best[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("features", help="CSV from cellbench train --export-features")
    ap.add_argument("--folds", type=int, default=5, help="StratifiedKFold folds")
    ap.add_argument(
        "--stratified-kfold",
        action="store_true",
        help="use scikit-learn's StratifiedKFold even when the CSV has cellbench's folds",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default="0.001,0.003,0.01,0.03,0.1,0.3,1,3")
    ap.add_argument("--class-weight", default="none", choices=["none", "balanced"])
    ap.add_argument(
        "--select",
        default="split",
        choices=["split", "cv-logloss"],
        help="split: C by accuracy on an inner stratified 80/20 split; cv-logloss: C and class "
        "weighting (none/balanced) by the pooled log loss of 3 inner stratified folds, as "
        "cellbench's default probe chooses",
    )
    a = ap.parse_args()
    x, y, folds = load(a.features)
    grid = [float(v) for v in a.grid.split(",")]
    cw = None if a.class_weight == "none" else "balanced"
    if all(f != "" for f in folds) and not a.stratified_kfold:
        ids = np.array([int(f) for f in folds])
        splits = [(np.where(ids != k)[0], np.where(ids == k)[0]) for k in sorted(set(ids))]
        source = "cellbench's folds"
    else:
        skf = StratifiedKFold(a.folds, shuffle=True, random_state=a.seed)
        splits = list(skf.split(x, y))
        source = "StratifiedKFold"
    acc, bal, f1, chosen = [], [], [], []
    for train, test in splits:
        if a.select == "cv-logloss":
            c, weighting = choose_by_inner_log_loss(x[train], y[train], grid, a.seed)
            chosen.append((c, weighting))
            scaler, m = fit(x[train], y[train], c, weighting)
            p = m.predict(scaler.transform(x[test]))
            acc.append(accuracy_score(y[test], p))
            bal.append(balanced_accuracy_score(y[test], p))
            f1.append(f1_score(y[test], p, average="macro", labels=np.unique(y)))
            continue
        # Inner 80/20 split, stratified where every class has two images.
        _, counts = np.unique(y[train], return_counts=True)
        strat = y[train] if counts.min() >= 2 else None
        inner, val = train_test_split(
            train, test_size=0.2, stratify=strat, random_state=a.seed
        )
        scores = []
        for c in grid:
            scaler, m = fit(x[inner], y[inner], c, cw)
            scores.append(accuracy_score(y[val], m.predict(scaler.transform(x[val]))))
        c = grid[int(np.argmax(scores))]
        chosen.append(c)
        scaler, m = fit(x[train], y[train], c, cw)
        p = m.predict(scaler.transform(x[test]))
        acc.append(accuracy_score(y[test], p))
        bal.append(balanced_accuracy_score(y[test], p))
        f1.append(f1_score(y[test], p, average="macro", labels=np.unique(y)))
    print(f"{len(y)} images, {len(splits)} folds ({source}); C per fold: {chosen}")
    for name, v in [("accuracy", acc), ("balanced accuracy", bal), ("macro F1", f1)]:
        v = np.array(v)
        print(f"{name:18} {v.mean():.3f} ± {v.std(ddof=1):.3f}  " + "  ".join(f"{s:.3f}" for s in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
