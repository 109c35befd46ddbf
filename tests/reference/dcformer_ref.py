#!/usr/bin/python3
"""Independent PyTorch reference of DCFormer++ / Transformer++ and the AdamW recipe.

Written from /work/shared/design/dcmha.md sections 1-2 only (not from any other implementation):
float64, CPU, autograd, full T x T attention matrices (tiny sizes only). Needs torch (tested
with 1.13) and numpy; run it with /usr/bin/python3.

    dcformer_ref.py --in IN.dcft --out OUT.dcft --steps 20

IN (tensor_file format) holds every parameter under its C++ name (the reference does not
initialise anything itself), "ids" and "targets" (i32 [B, T]) and meta = {"spec": {...},
"optimizer": {...}, "lrs": [one lr per update]}. OUT holds
  "losses"        f64 [steps+1]: losses[i] = mean token cross-entropy after i updates,
  "grad.<name>"   f64: d loss / d param at step 0 (before any update, unclipped; also for --steps 0),
  "final.<name>"  f64: parameters after `steps` updates,
and meta {"loss0", "grad_norm0", "compose_stats": per layer ||Compose(X) - X|| / ||X|| and per
term, over allowed cells, at step 0}.
"""
import argparse
import math
import os
import sys

try:
    import numpy  # noqa: F401  (tensor_file needs it)
    import torch
except ImportError as e:  # exit status 77: the C++ test skips with this message
    print(f"dcformer_ref.py: {e} (run it with a python3 that has torch, e.g. /usr/bin/python3)", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tensor_file import read_tensor_file, write_tensor_file  # noqa: E402

FLT_MAX = 3.4028234663852886e38
READ_NORM_EPS = 1e-6  # scale-free RMSNorm of the dynamic read weights (dcmha.md 1.2)
C = 4                 # branches: 0 pre-q, 1 pre-k, 2 post-q, 3 post-k


class Spec:
    def __init__(self, d):
        self.compose = bool(d["compose"])
        self.L = int(d["n_layers"])
        self.E = int(d["d_model"])
        self.N = int(d["n_heads"])
        self.D = int(d["head_dim"])
        self.F = int(d["d_ff"])
        self.V = int(d["vocab"])
        self.T = int(d["seq_len"])
        self.windows = [int(w) for w in d["window_pattern"]]
        self.qk_norm = bool(d["qk_norm"])
        self.norm_eps = float(d["norm_eps"])
        self.qk_norm_eps = float(d["qk_norm_eps"])
        self.rope_base = float(d["rope_base"])
        self.I = int(d["dyn_rank"])
        self.K = 2 * self.I * self.N

    def window(self, layer):
        return self.windows[layer % len(self.windows)] if self.windows else 0

    def param_shapes(self):
        """Expected parameters (name -> shape), in model order."""
        E, N, D, F, V, K, I = self.E, self.N, self.D, self.F, self.V, self.K, self.I
        p = {"embed": (V, E)}
        for l in range(self.L):
            s = f"layers.{l}."
            p[s + "attn_norm"] = (E,)
            for w in ("wq", "wk", "wv"):
                p[s + "attn." + w] = (E, N, D)
            if self.qk_norm:
                p[s + "attn.q_norm"] = (D,)
                p[s + "attn.k_norm"] = (D,)
            if self.compose:
                p[s + "attn.dyn.w1"] = (E, C, K)
                p[s + "attn.dyn.w2"] = (C, K, 2 * I, N)
                p[s + "attn.dyn.wg"] = (E, C, N)
            p[s + "attn.wo"] = (N, D, E)
            p[s + "mlp_norm"] = (E,)
            p[s + "mlp.w_gate"] = (E, F)
            p[s + "mlp.w_up"] = (E, F)
            p[s + "mlp.w_down"] = (F, E)
        p["final_norm"] = (E,)
        p["head"] = (E, V)
        return p


# ---- building blocks (dcmha.md 1.1, 1.2, 2.1)

def rmsnorm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w over the last axis; w None: no scale."""
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return y if w is None else y * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def rope_half_split(x, base):
    """x [B, T, N, D]; dim j rotated with j + D/2 by angle pos * base^(-2j/D), pos = 0..T-1."""
    B, T, N, D = x.shape
    h = D // 2
    j = torch.arange(h, dtype=torch.float64)
    inv_freq = base ** (-2.0 * j / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, h]
    cos = torch.cos(ang)[None, :, None, :]
    sin = torch.sin(ang)[None, :, None, :]
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def allowed_mask(T, window):
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    m = (t - s) >= 0
    if window > 0:
        m = m & ((t - s) <= window - 1)
    return m  # [T, S] bool


def dynamic_weights(h1, w1, w2, wg, I):
    """h1 [B,T,E] -> per branch c: a [B,T,C,I,N] (normalised reads), b [B,T,C,I,N] (writes), g [B,T,C,N]."""
    hid = gelu_tanh(torch.einsum("bte,eck->btck", h1, w1))      # [B,T,C,K]
    y = torch.einsum("btck,ckjn->btcjn", hid, w2)                # [B,T,C,2I,N]
    a_hat, b = y[:, :, :, :I, :], y[:, :, :, I:, :]
    a = a_hat / torch.sqrt((a_hat * a_hat).mean(dim=-1, keepdim=True) + READ_NORM_EPS)
    g = torch.tanh(torch.einsum("bte,ecn->btcn", h1, wg))        # [B,T,C,N]
    return a, b, g


def compose(X, aq, bq, gq, ak, bk, gk, stats=None, mask=None):
    """dcmha.md 1.3. X [B,N,T,S]; query-side aq, bq [B,T,I,N], gq [B,T,N]; key-side the same, indexed by s.

    Y[m,t,s] = X[m,t,s](1 + gq[t,m] + gk[s,m]) + sum_r bq[t,r,m] sum_n aq[t,r,n] X[n,t,s]
                                              + sum_r bk[s,r,m] sum_n ak[s,r,n] X[n,t,s]
    """
    gate_q = X * gq.permute(0, 2, 1)[:, :, :, None]            # [B,N,T,1]
    gate_k = X * gk.permute(0, 2, 1)[:, :, None, :]            # [B,N,1,S]
    hq = torch.einsum("btrn,bnts->brts", aq, X)
    low_q = torch.einsum("btrm,brts->bmts", bq, hq)
    hk = torch.einsum("bsrn,bnts->brts", ak, X)
    low_k = torch.einsum("bsrm,brts->bmts", bk, hk)
    Y = X + gate_q + gate_k + low_q + low_k
    if stats is not None:
        with torch.no_grad():
            m = mask[None, None].to(X.dtype)
            nx = torch.sqrt(((X * m) ** 2).sum()).item()
            rel = lambda t: torch.sqrt(((t * m) ** 2).sum()).item() / nx  # noqa: E731
            stats.update({"total": rel(Y - X), "gate_q": rel(gate_q), "gate_k": rel(gate_k),
                          "lowrank_q": rel(low_q), "lowrank_k": rel(low_k)})
    return Y


def attention(spec, layer, P, h1, stats=None):
    B, T, _ = h1.shape
    E, N, D, I = spec.E, spec.N, spec.D, spec.I
    pre = f"layers.{layer}.attn."
    q = (h1 @ P[pre + "wq"].reshape(E, N * D)).view(B, T, N, D)
    k = (h1 @ P[pre + "wk"].reshape(E, N * D)).view(B, T, N, D)
    v = (h1 @ P[pre + "wv"].reshape(E, N * D)).view(B, T, N, D)
    if spec.qk_norm:
        q = rmsnorm(q, P[pre + "q_norm"], spec.qk_norm_eps)
        k = rmsnorm(k, P[pre + "k_norm"], spec.qk_norm_eps)
    q = rope_half_split(q, spec.rope_base)
    k = rope_half_split(k, spec.rope_base)
    q = q / math.sqrt(D)
    A = torch.einsum("btnd,bsnd->bnts", q, k)                   # [B,N,T,S]
    mask = allowed_mask(T, spec.window(layer))
    if spec.compose:
        a, b, g = dynamic_weights(h1, P[pre + "dyn.w1"], P[pre + "dyn.w2"], P[pre + "dyn.wg"], I)
        st_pre, st_post = ({}, {}) if stats is not None else (None, None)
        Z = compose(A, a[:, :, 0], b[:, :, 0], g[:, :, 0], a[:, :, 1], b[:, :, 1], g[:, :, 1], st_pre, mask)
    else:
        Z = A
    Z = torch.where(mask[None, None], Z, torch.full_like(Z, -0.7 * FLT_MAX))
    Pr = torch.softmax(Z, dim=-1)
    if spec.compose:
        P2 = compose(Pr, a[:, :, 2], b[:, :, 2], g[:, :, 2], a[:, :, 3], b[:, :, 3], g[:, :, 3], st_post, mask)
        P2 = torch.where(mask[None, None], P2, torch.zeros_like(P2))  # re-mask (no-op in exact math)
        if stats is not None:
            stats.append({"layer": layer, "window": spec.window(layer), "pre": st_pre, "post": st_post})
    else:
        P2 = Pr
    o = torch.einsum("bnts,bsnd->btnd", P2, v)
    return o.reshape(B, T, N * D) @ P[pre + "wo"].reshape(N * D, E)


def loss_fn(spec, P, ids, targets, stats=None):
    """Mean token cross-entropy of DCFormer++ (compose) / Transformer++ (no compose), dcmha.md 2.1."""
    x = P["embed"][ids]                                          # [B,T,E]
    for l in range(spec.L):
        s = f"layers.{l}."
        h1 = rmsnorm(x, P[s + "attn_norm"], spec.norm_eps)
        x = x + attention(spec, l, P, h1, stats)
        h2 = rmsnorm(x, P[s + "mlp_norm"], spec.norm_eps)
        gate = h2 @ P[s + "mlp.w_gate"]
        up = h2 @ P[s + "mlp.w_up"]
        x = x + (gate * torch.sigmoid(gate) * up) @ P[s + "mlp.w_down"]
    hf = rmsnorm(x, P["final_norm"], spec.norm_eps)
    logits = hf @ P["head"]                                      # [B,T,V]
    lse = torch.logsumexp(logits, dim=-1)
    tgt = torch.gather(logits, -1, targets[..., None].long())[..., 0]
    return (lse - tgt).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)

    tensors, meta = read_tensor_file(args.inp)
    spec = Spec(meta["spec"])
    opt = meta["optimizer"]
    b1, b2, eps, wd, clip = (float(opt[k]) for k in ("beta1", "beta2", "eps", "weight_decay", "grad_clip"))
    lrs = [float(v) for v in meta["lrs"]]
    if len(lrs) < args.steps:
        sys.exit(f"need {args.steps} learning rates, the file has {len(lrs)}")

    shapes = spec.param_shapes()
    names = list(shapes)
    extra = sorted(set(tensors) - set(names) - {"ids", "targets"})
    missing = [n for n in names if n not in tensors]
    if missing or extra:
        sys.exit(f"parameter set mismatch: missing {missing}, unexpected {extra}")
    P = {}
    for n in names:
        if tuple(tensors[n].shape) != shapes[n]:
            sys.exit(f"{n}: shape {tensors[n].shape}, expected {shapes[n]}")
        P[n] = torch.tensor(tensors[n], dtype=torch.float64, requires_grad=True)
    ids = torch.tensor(tensors["ids"], dtype=torch.int64).reshape(-1, spec.T)
    targets = torch.tensor(tensors["targets"], dtype=torch.int64).reshape(-1, spec.T)
    if ids.min() < 0 or ids.max() >= spec.V or targets.min() < 0 or targets.max() >= spec.V:
        sys.exit("token id out of range")

    m = {n: torch.zeros_like(P[n]) for n in names}
    v = {n: torch.zeros_like(P[n]) for n in names}
    losses, grads0, stats, gnorm0 = [], {}, [], None
    for i in range(args.steps + 1):
        for n in names:
            P[n].grad = None
        loss = loss_fn(spec, P, ids, targets, stats if i == 0 else None)
        losses.append(loss.item())
        if i == args.steps and i > 0:
            break
        loss.backward()
        with torch.no_grad():
            grads = {n: P[n].grad.detach().clone() for n in names}
            gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            if i == 0:
                grads0, gnorm0 = {n: g.clone() for n, g in grads.items()}, gnorm
            if i == args.steps:
                break
            if clip > 0 and gnorm > clip:
                for g in grads.values():
                    g.mul_(clip / gnorm)
            t = i + 1
            lr = lrs[i]
            for n in names:
                g = grads[n]
                m[n].mul_(b1).add_((1 - b1) * g)
                v[n].mul_(b2).add_((1 - b2) * g * g)
                mhat = m[n] / (1 - b1 ** t)
                vhat = v[n] / (1 - b2 ** t)
                P[n].sub_(lr * (mhat / (torch.sqrt(vhat) + eps) + wd * P[n]))
        print(f"step {i}: loss {losses[-1]:.12f} grad_norm {gnorm:.6e} lr {lrs[i]:.4e}")
    print(f"final loss after {args.steps} updates: {losses[-1]:.12f}")
    for s in stats:
        pre, post = s["pre"], s["post"]
        print(f"layer {s['layer']} (window {s['window']}): |Compose(X)-X|/|X| pre {pre['total']:.4f} post {post['total']:.4f}"
              f"  terms pre gq {pre['gate_q']:.3g} gk {pre['gate_k']:.3g} lq {pre['lowrank_q']:.3g} lk {pre['lowrank_k']:.3g}"
              f"  post gq {post['gate_q']:.3g} gk {post['gate_k']:.3g} lq {post['lowrank_q']:.3g} lk {post['lowrank_k']:.3g}")

    out = [("losses", torch.tensor(losses, dtype=torch.float64).numpy())]
    out += [("grad." + n, grads0[n].numpy()) for n in names]
    out += [("final." + n, P[n].detach().numpy()) for n in names]
    write_tensor_file(args.out, out, {"loss0": losses[0], "grad_norm0": gnorm0, "compose_stats": stats,
                                      "torch": torch.__version__, "steps": args.steps})


if __name__ == "__main__":
    main()
