"""DCFTNSR1 tensor container (Python twin of tests/reference/tensor_file.h).

Layout: 8-byte magic b"DCFTNSR1", u64 little-endian header length H, H bytes of JSON
{"tensors": [{"name", "dtype": "f32"|"f64"|"i32", "shape", "offset", "nbytes"}], "meta": {...}},
then the data section (starts at 16 + H; "offset" counts bytes from its start), little-endian, row-major.
"""
import json
import struct

import numpy as np

MAGIC = b"DCFTNSR1"
_DTYPES = {"f32": np.dtype("<f4"), "f64": np.dtype("<f8"), "i32": np.dtype("<i4")}
_TAGS = {np.dtype("float32"): "f32", np.dtype("float64"): "f64", np.dtype("int32"): "i32"}


class TensorFileError(Exception):
    pass


def read_tensor_file(path):
    """Returns (dict name -> numpy array, meta dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 16:
        raise TensorFileError(f"{path}: too short ({len(blob)} bytes)")
    if blob[:8] != MAGIC:
        raise TensorFileError(f"{path}: bad magic {blob[:8]!r}")
    (h,) = struct.unpack("<Q", blob[8:16])
    if h > len(blob) - 16:
        raise TensorFileError(f"{path}: header length {h} exceeds the file size {len(blob)}")
    try:
        header = json.loads(blob[16:16 + h].decode("utf-8"))
    except ValueError as e:
        raise TensorFileError(f"{path}: header is not valid JSON: {e}")
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise TensorFileError(f'{path}: header lacks a "tensors" array')
    data = memoryview(blob)[16 + h:]
    out = {}
    for e in header["tensors"]:
        try:
            name, tag, shape, off, nb = e["name"], e["dtype"], [int(d) for d in e["shape"]], int(e["offset"]), int(e["nbytes"])
        except (KeyError, TypeError, ValueError) as ex:
            raise TensorFileError(f"{path}: malformed tensor entry {e!r}: {ex}")
        if tag not in _DTYPES:
            raise TensorFileError(f"{path}: tensor {name!r} has unknown dtype {tag!r}")
        if name in out:
            raise TensorFileError(f"{path}: duplicate tensor name {name!r}")
        dt = _DTYPES[tag]
        expect = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nb != expect:
            raise TensorFileError(f"{path}: tensor {name!r}: nbytes {nb} does not match shape {shape}")
        if off < 0 or off + nb > len(data):
            raise TensorFileError(f"{path}: tensor {name!r} lies outside the data section")
        out[name] = np.frombuffer(data[off:off + nb], dtype=dt).reshape(shape).copy()
    return out, header.get("meta", {})


def write_tensor_file(path, tensors, meta=None):
    """tensors: list of (name, numpy array) or a dict; arrays of float32, float64 or int32."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    entries, chunks, off = [], [], 0
    for name, a in items:
        a = np.ascontiguousarray(a)
        tag = _TAGS.get(a.dtype)
        if tag is None:
            raise TensorFileError(f"{path}: tensor {name!r} has unsupported dtype {a.dtype}")
        off = (off + 63) // 64 * 64
        b = a.astype(_DTYPES[tag], copy=False).tobytes()
        entries.append({"name": name, "dtype": tag, "shape": list(a.shape), "offset": off, "nbytes": len(b)})
        chunks.append((off, b))
        off += len(b)
    js = json.dumps({"tensors": entries, "meta": meta or {}}).encode("utf-8")
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        pos = 0
        for o, b in chunks:
            f.write(b"\0" * (o - pos))
            f.write(b)
            pos = o + len(b)
