"""Independent brute-force reference for the tests: scalar float64 loops written
straight from the equations of the contract (README "The math"), sharing no code
with fastmdlstm. Slow; use on small problems only."""

import itertools
import math

import numpy as np


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def scan(x, weights, bias, variant="slstm", h0=None, c0=None):
    """One scan from the origin corner of x (*S, C) for a single sample.

    weights (C + d*N, (3+d)*N), bias ((3+d)*N,). h0, c0: optional padded
    boundary arrays (*(S+1), N) whose index-0 entries are the boundary states.
    Returns h, c of shape (*S, N), float64.
    """
    x = np.asarray(x, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    spatial = x.shape[:-1]
    d = len(spatial)
    n = weights.shape[1] // (3 + d)
    padded = tuple(s + 1 for s in spatial) + (n,)
    h = np.zeros(padded) if h0 is None else np.array(h0, dtype=np.float64)
    c = np.zeros(padded) if c0 is None else np.array(c0, dtype=np.float64)
    # Raster order visits every predecessor (one step back along an axis) first.
    for p in itertools.product(*(range(s) for s in spatial)):
        q = tuple(v + 1 for v in p)
        preds = [tuple(q[a] - (1 if a == k else 0) for a in range(d)) for k in range(d)]
        v = list(x[p]) + [h[pr][u] for pr in preds for u in range(n)]
        for u in range(n):
            pre = [bias[blk * n + u] + sum(v[r] * weights[r, blk * n + u]
                                           for r in range(len(v)))
                   for blk in range(3 + d)]
            g = math.tanh(pre[0])
            o = _sigmoid(pre[1])
            i = _sigmoid(pre[2])
            cell = g * i + sum(_sigmoid(pre[3 + k]) * c[preds[k]][u] for k in range(d))
            c[q][u] = cell
            h[q][u] = math.tanh(cell * o) if variant == "slstm" else o * math.tanh(cell)
    inner = tuple(slice(1, None) for _ in range(d))
    return h[inner], c[inner]


def forward(x, weights, bias, signs, variant="slstm", sizes=None):
    """Batch, several directions (sign tuples), per-sample valid sizes.
    Mirrors each sample's valid region per direction explicitly, index by index."""
    x = np.asarray(x, dtype=np.float64)
    batch, spatial = x.shape[0], x.shape[1:-1]
    d = len(spatial)
    n = weights.shape[-1] // (3 + d)
    h_all = np.zeros((batch,) + spatial + (len(signs) * n,))
    c_all = np.zeros_like(h_all)
    for b in range(batch):
        size = tuple(spatial) if sizes is None else tuple(int(s) for s in sizes[b])
        for z, sign in enumerate(signs):
            # scan coordinate u along axis k is array index u (sign +1) or size-1-u
            def index(u, sign=sign, size=size):
                return tuple(u[k] if sign[k] > 0 else size[k] - 1 - u[k] for k in range(d))
            xs = np.zeros(size + (x.shape[-1],))
            for u in itertools.product(*(range(s) for s in size)):
                xs[u] = x[(b,) + index(u)]
            h, c = scan(xs, weights[z], bias[z], variant)
            for u in itertools.product(*(range(s) for s in size)):
                h_all[(b,) + index(u) + (slice(z * n, (z + 1) * n),)] = h[u]
                c_all[(b,) + index(u) + (slice(z * n, (z + 1) * n),)] = c[u]
    return h_all, c_all
