#!/usr/bin/env python3
"""scikit-learn reference values for `src/experiment/metrics.rs`.

Run in a throwaway venv (NOT a project dependency):

    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-learn numpy
    /tmp/skvenv/bin/python tools/metrics_fixtures.py

Writes `tests/fixtures/metrics/sklearn.json` (relative to the repository
root).  Every case is generated from a fixed numpy seed, so re-running the
script reproduces the file byte for byte (for a given sklearn/numpy version).

Probabilities are rounded to 6 decimals *before* anything is computed, and all
reference values are computed from exactly those rounded numbers.  (The Rust
side reads them as f32; distinct 6-decimal values in [0, 1] stay distinct and
keep their order in f32, so every rank/argmax/threshold based quantity is
unchanged.)

Conventions mirrored by the Rust module:
  * prediction = argmax of the probability vector (numpy: ties -> lowest index);
    multi-label prediction = prob >= threshold;
  * per-class precision/recall/F1/support =
    precision_recall_fscore_support(y, p, labels=range(K), zero_division=0),
    macro/weighted likewise with average=...;
  * per-class AUC = roc_auc_score(y == k, probs[:, k]), null when class k is
    absent or is the only class in y; macro_auc = mean of the defined ones
    (binary task: AUC of class 1);
  * balanced accuracy = balanced_accuracy_score; multi-label: mean over labels
    of balanced_accuracy_score(y[:, k], p[:, k]);
  * kappa_quadratic = cohen_kappa_score(y, p, labels=range(K), weights="quadratic")
    (ordinal); kappa = cohen_kappa_score(y, p, labels=range(K)) (single-label tasks;
    null where sklearn gives NaN).
"""

import json
import os

import numpy as np
import sklearn
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "metrics", "sklearn.json")

rng = np.random.default_rng(20240611)


def r6(a):
    """Round to 6 decimals (the values stored in the fixture)."""
    return np.round(np.asarray(a, dtype=np.float64), 6)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fl(x):
    return None if x is None else float(x)


def auc_or_none(y_bin, score):
    y_bin = np.asarray(y_bin, dtype=bool)
    if y_bin.all() or (~y_bin).all():
        return None
    return float(roc_auc_score(y_bin, score))


def prf_block(y, p, k):
    labels = list(range(k))
    pr, rc, f1, sup = precision_recall_fscore_support(
        y, p, labels=labels, average=None, zero_division=0
    )
    out = {
        "precision": [float(v) for v in pr],
        "recall": [float(v) for v in rc],
        "f1": [float(v) for v in f1],
        "support": [int(v) for v in sup],
    }
    for avg in ("macro", "weighted"):
        a, b, c, _ = precision_recall_fscore_support(
            y, p, labels=labels, average=avg, zero_division=0
        )
        out[f"{avg}_precision"] = float(a)
        out[f"{avg}_recall"] = float(b)
        out[f"{avg}_f1"] = float(c)
    return out


def single_case(name, task, labels, truth, probs, with_roc=False):
    probs = r6(probs)
    truth = np.asarray(truth, dtype=np.int64)
    k = len(labels)
    assert probs.shape == (len(truth), k)
    pred = probs.argmax(axis=1)
    exp = {
        "accuracy": float(accuracy_score(truth, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
    }
    exp.update(prf_block(truth, pred, k))
    aucs = [auc_or_none(truth == c, probs[:, c]) for c in range(k)]
    exp["auc"] = aucs
    if task == "binary":
        exp["macro_auc"] = auc_or_none(truth == 1, probs[:, 1])
    else:
        defined = [a for a in aucs if a is not None]
        exp["macro_auc"] = float(np.mean(defined)) if defined else None
        if all(a is not None for a in aucs):
            # Cross-check against sklearn's own one-vs-rest macro average
            # (which raises when a class is absent from y_true).
            ovr = roc_auc_score(truth, probs, multi_class="ovr", average="macro",
                                labels=list(range(k)))
            assert abs(ovr - exp["macro_auc"]) < 1e-12, (name, ovr, exp["macro_auc"])
    exp["confusion"] = confusion_matrix(truth, pred, labels=list(range(k))).tolist()
    exp["kappa_quadratic"] = (
        float(cohen_kappa_score(truth, pred, labels=list(range(k)), weights="quadratic"))
        if task == "ordinal"
        else None
    )
    kappa = float(cohen_kappa_score(truth, pred, labels=list(range(k))))
    exp["kappa"] = kappa if np.isfinite(kappa) else None
    exp["hamming_loss"] = None
    if with_roc:
        fpr, tpr, _ = roc_curve(truth == 1, probs[:, 1], drop_intermediate=False)
        exp["roc_curve"] = [[float(a), float(b)] for a, b in zip(fpr, tpr)]
    return {
        "name": name,
        "task": task,
        "labels": labels,
        "truth": truth.tolist(),
        "probs": probs.tolist(),
        "expected": exp,
    }


def multi_label_case(name, labels, truth, probs, threshold=0.5):
    probs = r6(probs)
    truth = np.asarray(truth, dtype=bool)
    k = len(labels)
    pred = probs >= threshold
    exp = {
        "accuracy": float(accuracy_score(truth, pred)),
        "balanced_accuracy": float(
            np.mean([balanced_accuracy_score(truth[:, c], pred[:, c]) for c in range(k)])
        ),
    }
    exp.update(prf_block(truth.astype(int), pred.astype(int), k))
    aucs = [auc_or_none(truth[:, c], probs[:, c]) for c in range(k)]
    exp["auc"] = aucs
    defined = [a for a in aucs if a is not None]
    exp["macro_auc"] = float(np.mean(defined)) if defined else None
    exp["confusion"] = None
    exp["kappa_quadratic"] = None
    exp["kappa"] = None
    exp["hamming_loss"] = float(hamming_loss(truth, pred))
    return {
        "name": name,
        "task": "multi-label",
        "labels": labels,
        "threshold": threshold,
        "truth": truth.tolist(),
        "probs": probs.tolist(),
        "expected": exp,
    }


def case_binary():
    """40 samples, scores on a 0.1 grid (many ties), one exact 0.5/0.5 argmax tie."""
    n = 40
    truth = (rng.random(n) < 0.4).astype(int)
    s = np.clip(0.5 + 0.25 * (2 * truth - 1) + rng.normal(0, 0.22, n), 0.0, 1.0)
    s = np.round(s, 1)  # 0.1 grid -> tied scores
    s[3] = 0.5  # [0.5, 0.5]: argmax tie -> class 0
    s[7] = 0.5
    probs = np.stack([1.0 - s, s], axis=1)
    return single_case("binary_ties", "binary", ["negative", "positive"], truth, probs,
                       with_roc=True)


def case_multiclass():
    """5 classes, class 4 is rare and never the argmax."""
    n = 50
    counts = [14, 12, 11, 9, 4]
    truth = np.repeat(np.arange(5), counts)
    rng.shuffle(truth)
    logits = rng.normal(0, 1.0, (n, 5))
    logits[np.arange(n), truth] += 1.4
    logits[:, 4] -= 3.0  # class 4 never wins
    probs = softmax(logits)
    assert not (r6(probs).argmax(axis=1) == 4).any()
    labels = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    return single_case("multiclass_never_predicted", "multi-class", labels, truth, probs)


def case_ordinal():
    """Diabetic-retinopathy-like grades 0-4, imbalanced, mostly off-by-one errors."""
    n = 60
    truth = rng.choice(5, size=n, p=[0.4, 0.2, 0.2, 0.12, 0.08])
    latent = truth + rng.normal(0, 0.7, n)
    grades = np.arange(5)
    logits = -1.5 * (grades[None, :] - latent[:, None]) ** 2
    probs = softmax(logits)
    labels = ["0 none", "1 mild", "2 moderate", "3 severe", "4 proliferative"]
    return single_case("ordinal_retinopathy", "ordinal", labels, truth, probs)


def case_multilabel():
    """4 labels, 30 samples, label 3 rare, a few probabilities exactly at 0.5."""
    n = 30
    prev = np.array([0.5, 0.35, 0.25, 0.08])
    truth = rng.random((n, 4)) < prev[None, :]
    truth[0, 3] = True  # make sure the rare label has a positive
    z = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.1, (n, 4))
    probs = 1.0 / (1.0 + np.exp(-z))
    probs[2, 0] = 0.5  # >= threshold -> predicted positive
    probs[5, 1] = 0.5
    probs[9, 2] = 0.4999995  # rounds to 0.5 as well
    labels = ["mitotic", "apoptotic", "multinucleated", "artefact"]
    return multi_label_case("multilabel_4", labels, truth, probs)


def case_tiny():
    """Hand-checkable: 3 classes, 6 samples (see the Rust unit test for the arithmetic)."""
    truth = [0, 0, 1, 1, 2, 2]
    probs = [
        [0.7, 0.2, 0.1],  # pred 0 (correct)
        [0.3, 0.6, 0.1],  # pred 1 (wrong)
        [0.2, 0.7, 0.1],  # pred 1 (correct)
        [0.1, 0.8, 0.1],  # pred 1 (correct)
        [0.1, 0.2, 0.7],  # pred 2 (correct)
        [0.5, 0.1, 0.4],  # pred 0 (wrong)
    ]
    return single_case("tiny", "multi-class", ["a", "b", "c"], truth, probs)


def case_absent_class():
    """4 classes, class 2 absent from y_true but predicted twice (AUC undefined,
    excluded from balanced accuracy and macro AUC, but kept in macro P/R/F1)."""
    n = 24
    truth = rng.choice([0, 1, 3], size=n, p=[0.4, 0.35, 0.25])
    logits = rng.normal(0, 1.0, (n, 4))
    logits[np.arange(n), truth] += 1.5
    logits[:, 2] -= 1.0
    logits[[4, 11], 2] += 6.0  # class 2 predicted for two samples
    probs = softmax(logits)
    return single_case("absent_class", "multi-class", ["w", "x", "y", "z"], truth, probs)


def kappa_cases():
    """Stand-alone quadratic-kappa checks, including a middle grade that occurs in
    neither rating (there labels=range(K) matters: with labels=None sklearn would
    re-index the present grades and change the weights)."""
    out = []
    for n, k, absent in [(25, 5, None), (40, 5, 2), (15, 3, None), (30, 7, 3)]:
        choices = [g for g in range(k) if g != absent]
        a = rng.choice(choices, size=n)
        b = np.clip(a + rng.integers(-1, 2, size=n), 0, k - 1)
        if absent is not None:
            b[b == absent] = absent + 1
        kappa = cohen_kappa_score(a, b, labels=list(range(k)), weights="quadratic")
        out.append({"n_classes": k, "truth": a.tolist(), "pred": b.tolist(),
                    "kappa_quadratic": float(kappa),
                    "kappa": float(cohen_kappa_score(a, b, labels=list(range(k))))})
    return out


def main():
    cases = [
        case_binary(),
        case_multiclass(),
        case_ordinal(),
        case_multilabel(),
        case_tiny(),
        case_absent_class(),
    ]
    doc = {
        "generator": "tools/metrics_fixtures.py",
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "cases": cases,
        "kappa_cases": kappa_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
