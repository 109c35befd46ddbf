#!/usr/bin/python3
"""Independent checks of a dcformer checkpoint and its Hugging Face export (run with /usr/bin/python3,
which has Debian's h5py, numpy and torch).

    check_checkpoint.py --manifest-json M.json --ckpt STEP_DIR --export OUT_DIR \
        --data TOKENS --batches N --batch-size B --eval-loss L

1. h5py reads every dataset the manifest lists: float32, attributes (global_shape, offset, block_shape,
   element_range) as recorded, the same bytes as the raw file at the manifest's offset, and for a
   sample of datasets the XXH64 of the bytes h5py returns equals the checksum written at save time (a
   pure-Python XXH64 here): h5py gives the saved values. Each file's metadata checksum (bytes outside
   the data) is recomputed.
   Parameters are reassembled from their pieces by global offsets (every element exactly once).
2. model.safetensors is parsed by a reader written here from the format's rules: u64 little-endian
   header length, JSON header {name: {dtype, shape, data_offsets}} (+ optional __metadata__ of
   strings), offsets contiguous from 0 in order, within the file, sized shape x dtype size.
3. Names and shapes are those of the official DCFormer PyTorch module tree (pytorch/dcformer/
   modeling_dcformer.py, class DCFormer) for the exported config.json; values equal the reassembled
   checkpoint parameters under the documented transposes (docs/hf_export.md).
4. A forward pass written against the official names and layouts (wqkv split, dyn_w_proj dw_m / qkw_m
   as its training path uses them, _cross_head_proj) gives the same mean loss as `dcformer eval`.
Exit status 0 when everything holds, 1 otherwise, 77 if a module is missing.
"""
import argparse
import json
import math
import os
import struct
import sys

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:
    print(f"check_checkpoint.py: {e} (run it with /usr/bin/python3)", file=sys.stderr)
    sys.exit(77)

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


# ---- XXH64 (xxhash_spec.md), pure Python ------------------------------------------------------------
M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                      0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        lanes = struct.unpack_from("<%dQ" % ((n // 32) * 4), data, 0)
        for k in range(0, len(lanes), 4):
            v[0] = _round(v[0], lanes[k])
            v[1] = _round(v[1], lanes[k + 1])
            v[2] = _round(v[2], lanes[k + 2])
            v[3] = _round(v[3], lanes[k + 3])
        i = (n // 32) * 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ _round(0, x)) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        (k,) = struct.unpack_from("<Q", data, i)
        h = (_rotl(h ^ _round(0, k), 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        (k,) = struct.unpack_from("<I", data, i)
        h = (_rotl(h ^ ((k * P1) & M64), 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * P5) & M64), 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


# ---- 1. the HDF5 files through h5py -------------------------------------------------------------------
_raw = {}


def raw(path):
    if path not in _raw:
        _raw[path] = open(path, "rb").read()
    return _raw[path]


def ints(v):
    return [int(x) for x in v]


def read_checkpoint(manifest, ckpt_dir):
    files = {}
    params = {}
    covered = {}
    entries = manifest["tensors"]
    # XXH64 in Python is slow: hash a sample (the smallest datasets, plus every partial piece up to 64 KiB).
    by_size = sorted(entries, key=lambda t: int(t["bytes"]))
    sample = {t["name"] + "@" + t["file"] for t in by_size[:12]}
    sample |= {t["name"] + "@" + t["file"] for t in entries
               if int(t["element_end"]) - int(t["element_begin"]) < int(np.prod(ints(t["block_shape"])))
               and int(t["bytes"]) <= 65536}
    hashed = 0
    data_ranges = {}
    for t in entries:
        path = os.path.join(ckpt_dir, t["file"])
        if path not in files:
            files[path] = h5py.File(path, "r")
        ds = files[path][t["name"]]
        check(ds.dtype == np.dtype("<f4"), f"{t['name']}: dtype {ds.dtype}")
        gs, off, blk = ints(t["global_shape"]), ints(t["offset"]), ints(t["block_shape"])
        b, e = int(t["element_begin"]), int(t["element_end"])
        check(list(ds.attrs["global_shape"]) == gs, f"{t['name']}: global_shape attribute")
        check(list(ds.attrs["offset"]) == off, f"{t['name']}: offset attribute")
        check(list(ds.attrs["block_shape"]) == blk, f"{t['name']}: block_shape attribute")
        check(list(ds.attrs["element_range"]) == [b, e], f"{t['name']}: element_range attribute")
        values = np.asarray(ds[()], dtype="<f4").reshape(-1)
        check(values.size == e - b, f"{t['name']}: {values.size} values for range [{b}, {e})")
        # The manifest's byte offset points at exactly these values in the raw file.
        fo, nb = int(t["file_offset"]), int(t["bytes"])
        check(raw(path)[fo:fo + nb] == values.tobytes(), f"{t['name']}: raw bytes at {fo} differ from h5py's values")
        data_ranges.setdefault(path, []).append((fo, nb))
        if t["name"] + "@" + t["file"] in sample:
            h = xxh64(values.tobytes())
            check(h == int(t["checksum"]), f"{t['name']} in {t['file']}: h5py bytes hash {h:016x}, "
                                           f"manifest {int(t['checksum']):016x}")
            hashed += 1
        if t["kind"] != "param":
            continue
        p = t["param"]
        if p not in params:
            params[p] = np.zeros(gs, dtype="<f4")
            covered[p] = np.zeros(gs, dtype=np.int32)
        local = np.unravel_index(np.arange(b, e), blk)
        glob = tuple(local[d] + off[d] for d in range(len(gs)))
        params[p][glob] = values
        covered[p][glob] += 1
    # The metadata checksum: XXH64 of each file's bytes outside the data ranges.
    for f in manifest["files"]:
        path = os.path.join(ckpt_dir, f["name"])
        data, at, meta = raw(path), 0, bytearray()
        for off, n in sorted(data_ranges.get(path, [])):
            meta += data[at:off]
            at = max(at, off + n)
        meta += data[at:]
        check(len(data) == int(f["bytes"]), f"{f['name']}: {len(data)} bytes, manifest {f['bytes']}")
        check(xxh64(bytes(meta)) == int(f["metadata_checksum"]), f"{f['name']}: metadata checksum")
    for p, c in covered.items():
        check(bool((c == 1).all()), f"{p}: pieces cover elements {int(c.min())}..{int(c.max())} times")
    for f in files.values():
        f.close()
    print(f"h5py: {len(entries)} datasets in {len(files)} files read, attributes as in the manifest, values at "
          f"the manifest's byte offsets; {hashed} datasets hashed (XXH64 of h5py's bytes == manifest checksum), "
          f"metadata checksums of all files match; "
          f"{len(params)} parameters reassembled, every element exactly once")
    return params


# ---- 2. safetensors, read by hand ---------------------------------------------------------------------
DTYPES = {"F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": (None, 2), "I64": ("<i8", 8),
          "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1), "U8": ("u1", 1), "BOOL": ("?", 1)}


def read_safetensors(path):
    raw = open(path, "rb").read()
    check(len(raw) >= 8, "safetensors: shorter than 8 bytes")
    (hlen,) = struct.unpack("<Q", raw[:8])
    check(8 + hlen <= len(raw), f"safetensors: header length {hlen} past the end")
    header_bytes = raw[8:8 + hlen]
    check(header_bytes[:1] == b"{", "safetensors: header does not start with '{'")
    header = json.loads(header_bytes.decode("utf-8"))
    check(hlen % 8 == 0, f"safetensors: header length {hlen} not a multiple of 8 (data alignment)")
    data = raw[8 + hlen:]
    meta = header.pop("__metadata__", {})
    check(all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()), "__metadata__ not str -> str")
    spans = []
    out = {}
    for name, info in header.items():
        check(set(info) == {"dtype", "shape", "data_offsets"}, f"{name}: keys {sorted(info)}")
        check(info["dtype"] in DTYPES, f"{name}: dtype {info['dtype']}")
        shape = info["shape"]
        check(all(isinstance(d, int) and d >= 0 for d in shape), f"{name}: shape {shape}")
        b, e = info["data_offsets"]
        size = DTYPES[info["dtype"]][1] * int(np.prod(shape, dtype=np.int64))
        check(0 <= b <= e <= len(data), f"{name}: offsets [{b}, {e}) outside the {len(data)}-byte data")
        check(e - b == size, f"{name}: {e - b} bytes for shape {shape} {info['dtype']}")
        spans.append((b, e, name))
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(data[b:e], dtype="<u2").astype(np.uint32) << 16
            out[name] = u16.view("<f4").reshape(shape)
        else:
            out[name] = np.frombuffer(data[b:e], dtype=DTYPES[info["dtype"]][0]).reshape(shape)
    spans.sort()
    at = 0
    for b, e, name in spans:
        check(b == at, f"safetensors: {name} starts at {b}, expected {at} (gap or overlap)")
        at = e
    check(at == len(data), f"safetensors: data ends at {at}, file has {len(data)} data bytes")
    print(f"safetensors: header {hlen} bytes, {len(out)} tensors, offsets contiguous over {len(data)} bytes, "
          f"dtypes {sorted({header[n]['dtype'] for n in header})}")
    return out


# ---- 3. names, shapes and values against the official module tree -----------------------------------
def official_shapes(cfg):
    E, N, L, F, V = cfg["dim"], cfg["n_head"], cfg["n_layer"], cfg["intermediate_size"], cfg["vocab_size"]
    D = E // N
    I = 2                     # DynamicWeightProjection: dynamic_squeeze_ratio = n_head // 2
    K = N * 4                 # dynamic_w_hidden_dim = n_head * 4
    s = {"tok_embeddings.weight": [V, E], "norm.weight": [E], "output.weight": [V, E]}
    for i in range(L):
        p = f"layers.{i}."
        a = p + "attention."
        s[p + "attention_norm.weight"] = [E]
        s[p + "ffn_norm.weight"] = [E]
        s[a + "wqkv.weight"] = [3 * N * D, E]
        s[a + "wo.weight"] = [E, E]
        if cfg["use_qk_norm"]:
            s[a + "q_norm.scale"] = [D]
            s[a + "k_norm.scale"] = [D]
        d = a + "dyn_w_proj."
        s[d + "dw1"] = [E, 1, 4, K]
        s[d + "qkw"] = [1, 4, K, 2 * I, N]
        s[d + "dd"] = [E, 1, 4 * N]
        s[d + "dw_m"] = [E, 4 * K + 4 * N]
        s[d + "qkw_m"] = [4, K, 2 * I * N]
        s[d + "pre_proj.w"] = [1, N, N]
        s[d + "post_proj.w"] = [1, N, N]
        s[p + "feed_forward.w1.weight"] = [F, E]
        s[p + "feed_forward.w3.weight"] = [F, E]
        s[p + "feed_forward.w2.weight"] = [E, F]
    return s


def check_export(st, cfg, params):
    want = official_shapes(cfg)
    check(set(st) == set(want), f"names: missing {sorted(set(want) - set(st))[:5]}, extra {sorted(set(st) - set(want))[:5]}")
    for n, shp in want.items():
        if n in st:
            check(list(st[n].shape) == shp, f"{n}: shape {list(st[n].shape)}, official {shp}")
    E, N, L = cfg["dim"], cfg["n_head"], cfg["n_layer"]
    D = E // N

    def eq(name, ref):
        check(np.array_equal(st[name], np.asarray(ref, dtype="<f4").reshape(st[name].shape)), f"{name}: values differ")

    eq("tok_embeddings.weight", params["embed"])
    eq("norm.weight", params["final_norm"])
    eq("output.weight", params["head"].T)
    for i in range(L):
        p, a = f"layers.{i}.", f"layers.{i}.attention."
        eq(p + "attention_norm.weight", params[p + "attn_norm"])
        eq(p + "ffn_norm.weight", params[p + "mlp_norm"])
        qkv = [params[p + w].reshape(E, N * D).T for w in ("attn.wq", "attn.wk", "attn.wv")]
        eq(a + "wqkv.weight", np.concatenate(qkv, axis=0))
        eq(a + "wo.weight", params[p + "attn.wo"].reshape(N * D, E).T)
        if cfg["use_qk_norm"]:
            eq(a + "q_norm.scale", params[p + "attn.q_norm"])
            eq(a + "k_norm.scale", params[p + "attn.k_norm"])
        d = a + "dyn_w_proj."
        eq(d + "dw1", params[p + "attn.dyn.w1"])
        eq(d + "qkw", params[p + "attn.dyn.w2"])
        eq(d + "dd", params[p + "attn.dyn.wg"])
        eq(d + "dw_m", np.concatenate([st[d + "dw1"].reshape(E, -1), st[d + "dd"].reshape(E, -1)], axis=-1))
        eq(d + "qkw_m", st[d + "qkw"].reshape(4, st[d + "qkw"].shape[2], -1))
        eq(d + "pre_proj.w", np.eye(N)[None])
        eq(d + "post_proj.w", np.eye(N)[None])
        eq(p + "feed_forward.w1.weight", params[p + "mlp.w_gate"].T)
        eq(p + "feed_forward.w3.weight", params[p + "mlp.w_up"].T)
        eq(p + "feed_forward.w2.weight", params[p + "mlp.w_down"].T)
    print(f"export: {len(want)} names and shapes of the official DCFormer module tree; values equal the "
          f"checkpoint's under the documented transposes")


# ---- 4. a forward pass in the official layout ---------------------------------------------------------
def rmsnorm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope_half(x, base):
    # x [B, T, N, D]: dims j and j + D/2 rotate together by pos * base^(-2j/D).
    B, T, N, D = x.shape
    j = torch.arange(D // 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-2.0 * j / D)
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def cross_head_proj(inputs, qw1, qw2, kw1, kw2, qdd, kdd):
    # modeling_dcformer.py _cross_head_proj (sw None): inputs B N T S; q*: B T I N / B T N; k*: B S I N / B S N.
    out = inputs
    for i in range(qw1.shape[-2]):
        qhidden = (inputs * qw1[..., i, :].transpose(-2, -1).unsqueeze(-1)).sum(1)
        out = out + qhidden.unsqueeze(1) * qw2[..., i, :].transpose(-2, -1).unsqueeze(-1)
        khidden = (inputs * kw1[..., i, :].transpose(-2, -1).unsqueeze(-2)).sum(1)
        out = out + khidden.unsqueeze(1) * kw2[..., i, :].transpose(-2, -1).unsqueeze(-2)
    out = out + inputs * qdd.transpose(-2, -1).unsqueeze(-1)
    out = out + inputs * kdd.transpose(-2, -1).unsqueeze(-2)
    return out


def official_forward_loss(st, cfg, qk_eps, local_keys, tokens, B, T, batches):
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in st.items()}
    E, N, L, V = cfg["dim"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"]
    D, I = E // N, 2
    eps, base = cfg["norm_eps"], cfg["rope_base"]
    wtypes = {"LG": [1, 0], "LGLL": [1, 0, 1, 1], "LGL6": [1, 0, 1, 1, 1, 1, 1, 1]}
    pattern = wtypes[cfg["window_type"] or "LG"] if cfg["window_size"] else [0]
    total, count = 0.0, 0
    t_idx = torch.arange(T)
    causal = t_idx[:, None] >= t_idx[None, :]
    local = causal & (t_idx[:, None] - t_idx[None, :] <= local_keys - 1)
    for bi in range(batches):
        rows = [tokens[(bi * B + r) * T:(bi * B + r) * T + T + 1] for r in range(B)]
        ids = torch.tensor([r[:T] for r in rows])
        tgt = torch.tensor([r[1:] for r in rows])
        x = sd["tok_embeddings.weight"][ids]
        for l in range(L):
            p, a = f"layers.{l}.", f"layers.{l}.attention."
            h = rmsnorm(x, sd[p + "attention_norm.weight"], eps)
            q, k, v = (h @ sd[a + "wqkv.weight"].T).split([E, E, E], dim=-1)
            q, k, v = (t.reshape(B, T, N, D) for t in (q, k, v))
            if cfg["use_qk_norm"]:
                q = rmsnorm(q, sd[a + "q_norm.scale"], qk_eps)
                k = rmsnorm(k, sd[a + "k_norm.scale"], qk_eps)
            q, k = rope_half(q, base), rope_half(k, base)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B N T D
            d = a + "dyn_w_proj."
            K = sd[d + "qkw_m"].shape[1]
            dw_hidden, dd = (h @ sd[d + "dw_m"]).split([4 * K, 4 * N], -1)
            dw_hidden = torch.nn.functional.gelu(dw_hidden, approximate="tanh").view(B, T, 4, K)
            dw = torch.einsum("BTCK,CKD->BTCD", dw_hidden, sd[d + "qkw_m"])
            w1, w2 = dw.view(B, T, 4, 2 * I, N).split(I, -2)
            w1 = w1 * torch.rsqrt(w1.pow(2).mean(-1, keepdim=True) + 1e-6)
            qkdd = torch.tanh(dd).view(B, T, 4, N)
            pre = (w1[:, :, 0], w2[:, :, 0], w1[:, :, 1], w2[:, :, 1], qkdd[:, :, 0], qkdd[:, :, 1])
            post = (w1[:, :, 2], w2[:, :, 2], w1[:, :, 3], w2[:, :, 3], qkdd[:, :, 2], qkdd[:, :, 3])
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            if cfg["use_dcmha"]:
                logits = cross_head_proj(logits, *pre)
            mask = local if pattern[l % len(pattern)] else causal
            logits = torch.where(mask, logits, torch.tensor(-1e300, dtype=torch.float64))
            probs = logits.softmax(-1)
            if cfg["use_dcmha"]:
                probs = cross_head_proj(probs, *post)
            y = (probs @ v).transpose(1, 2).reshape(B, T, E) @ sd[a + "wo.weight"].T
            x = x + y
            h2 = rmsnorm(x, sd[p + "ffn_norm.weight"], eps)
            ff = p + "feed_forward."
            x = x + (torch.nn.functional.silu(h2 @ sd[ff + "w1.weight"].T) * (h2 @ sd[ff + "w3.weight"].T)) @ sd[ff + "w2.weight"].T
        x = rmsnorm(x, sd["norm.weight"], eps)
        out = x @ sd["output.weight"].T
        total += torch.nn.functional.cross_entropy(out.reshape(-1, V), tgt.reshape(-1), reduction="sum").item()
        count += B * T
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest-json", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--eval-loss", type=float, required=True)
    args = ap.parse_args()
    manifest = json.load(open(args.manifest_json))
    params = read_checkpoint(manifest, args.ckpt)
    st = read_safetensors(os.path.join(args.export, "model.safetensors"))
    cfg = json.load(open(os.path.join(args.export, "config.json")))
    check(cfg.get("model_type") == "dcformer" and cfg.get("architectures") == ["DCFormer"], "config.json model type")
    check_export(st, cfg, params)
    extra = cfg.get("dcformer_export", {})
    tokens = list(open(args.data, "rb").read())  # byte tokens, like the run
    T = cfg["block_size"]
    loss = official_forward_loss(st, cfg, extra.get("qk_norm_eps", 1e-6), extra.get("local_window_keys", 0), tokens,
                                 args.batch_size, T, args.batches)
    rel = abs(loss - args.eval_loss) / abs(args.eval_loss)
    check(rel <= 1e-5, f"official-layout forward loss {loss:.8f} vs dcformer eval {args.eval_loss:.8f} (rel {rel:.2e})")
    print(f"forward in the official layout (float64): loss {loss:.8f}; dcformer eval (fp32): {args.eval_loss:.8f}; "
          f"relative difference {rel:.2e}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
