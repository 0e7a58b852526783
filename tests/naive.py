"""Independent brute-force reference for the tests: scalar float64 loops written
straight from the equations of the contract (README "The math"), sharing no code
with fastmdlstm. Slow; use on small problems only."""

import itertools
import math

import numpy as np


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _cell(variant, g, i, q, cp):
    """c of one unit (unclipped): q the sigmoids of the gate blocks after g, o, i
    (f_0 .. f_{d-1}; "stable": f, lam), cp the predecessors' c along axes 0..d-1."""
    d = len(q)
    if variant in ("slstm", "graves"):
        return g * i + sum(q[k] * cp[k] for k in range(d))
    if variant == "halved":
        return g * i + sum(q[k] * cp[k] for k in range(d)) / d
    if variant == "stable":
        f, lam = q
        return g * i + f * (lam * cp[0] + (1 - lam) * cp[1])
    raise ValueError(variant)


def _cell_grads(variant, q, cp, d_cell):
    """dL/d(pre-activation) of the gates q and dL/dcp, given dL/dc = d_cell."""
    d = len(q)
    if variant in ("slstm", "graves", "halved"):
        share = 1.0 / d if variant == "halved" else 1.0
        return ([d_cell * share * cp[k] * q[k] * (1 - q[k]) for k in range(d)],
                [d_cell * share * q[k] for k in range(d)])
    if variant == "stable":
        f, lam = q
        return ([d_cell * (lam * cp[0] + (1 - lam) * cp[1]) * f * (1 - f),
                 d_cell * f * (cp[0] - cp[1]) * lam * (1 - lam)],
                [d_cell * f * lam, d_cell * f * (1 - lam)])
    raise ValueError(variant)


def _h(variant, cell, o):
    if variant == "slstm":
        return math.tanh(cell * o)
    if variant in ("graves", "halved", "stable"):
        return o * math.tanh(cell)
    raise ValueError(variant)


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
            cell = _cell(variant, g, i, [_sigmoid(pre[3 + k]) for k in range(d)],
                         [c[preds[k]][u] for k in range(d)])
            c[q][u] = cell
            h[q][u] = _h(variant, cell, o)
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


def scan_backward(x, weights, bias, grad_h, grad_c=None, variant="slstm", h0=None, c0=None):
    """Gradients of one origin-corner scan of a single sample, scalar float64.

    Same arguments as scan, plus grad_h (and optional grad_c) of shape (*S, N):
    the gradient of the loss w.r.t. the h (and c) that scan returns. Returns
    (grad_x (*S, C), grad_weights, grad_bias, grad_h0, grad_c0), the last two
    of the padded shape (*(S+1), N), non-zero only at index-0 (boundary) entries.
    Cells whose |c| reaches the largest float are clipped, with derivative 0.
    """
    x = np.asarray(x, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    spatial = x.shape[:-1]
    d = len(spatial)
    ch = x.shape[-1]
    n = weights.shape[1] // (3 + d)
    big = np.finfo(np.float64).max
    padded = tuple(s + 1 for s in spatial) + (n,)
    h = np.zeros(padded) if h0 is None else np.array(h0, dtype=np.float64)
    c = np.zeros(padded) if c0 is None else np.array(c0, dtype=np.float64)
    order = list(itertools.product(*(range(s) for s in spatial)))
    tape = {}
    # Forward, keeping each unit's gates and inputs.
    for p in order:
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
            f = [_sigmoid(pre[3 + k]) for k in range(d)]
            cp = [c[preds[k]][u] for k in range(d)]
            raw = _cell(variant, g, i, f, cp)
            cell = min(max(raw, -big), big)
            c[q][u] = cell
            h[q][u] = _h(variant, cell, o)
            tape[q, u] = (v, preds, g, o, i, f, cp, cell, abs(raw) >= big)
    # Backward, successors first.
    dh = np.zeros(padded)
    dc = np.zeros(padded)
    inner = tuple(slice(1, None) for _ in range(d))
    dh[inner] = np.asarray(grad_h, dtype=np.float64)
    if grad_c is not None:
        dc[inner] = np.asarray(grad_c, dtype=np.float64)
    gx = np.zeros(x.shape)
    gw = np.zeros(weights.shape)
    gb = np.zeros(bias.shape)
    for p in reversed(order):
        q = tuple(v + 1 for v in p)
        for u in range(n):
            v, preds, g, o, i, f, cp, cell, clipped = tape[q, u]
            if variant == "slstm":
                t = math.tanh(cell * o)
                d_cell = dc[q][u] + dh[q][u] * (1 - t * t) * o
                d_o = dh[q][u] * (1 - t * t) * cell
            elif variant in ("graves", "halved", "stable"):
                t = math.tanh(cell)
                d_cell = dc[q][u] + dh[q][u] * o * (1 - t * t)
                d_o = dh[q][u] * t
            else:
                raise ValueError(variant)
            if clipped:
                d_cell = 0.0
            d_q, d_cp = _cell_grads(variant, f, cp, d_cell)
            d_pre = [d_cell * i * (1 - g * g), d_o * o * (1 - o), d_cell * g * i * (1 - i)] + d_q
            for k in range(d):
                dc[preds[k]][u] += d_cp[k]
            for blk in range(3 + d):
                col = blk * n + u
                gb[col] += d_pre[blk]
                for r in range(len(v)):
                    gw[r, col] += v[r] * d_pre[blk]
                    if r < ch:
                        gx[p][r] += weights[r, col] * d_pre[blk]
                    else:
                        k, w_unit = divmod(r - ch, n)
                        dh[preds[k]][w_unit] += weights[r, col] * d_pre[blk]
    dh[inner] = 0
    dc[inner] = 0
    return gx, gw, gb, dh, dc


def backward(x, weights, bias, signs, grad_h, grad_c=None, variant="slstm", sizes=None):
    """Gradients of forward (this module's) w.r.t. x, weights (Z, R, G) and
    bias (Z, G), for grad_h (and grad_c) of forward's output shape. Each
    sample's valid region is mirrored per direction index by index; grad_x
    outside it is zero and grad_h/grad_c there are ignored."""
    x = np.asarray(x, dtype=np.float64)
    batch, spatial = x.shape[0], x.shape[1:-1]
    d = len(spatial)
    n = weights.shape[-1] // (3 + d)
    gx_all = np.zeros(x.shape)
    gw_all = np.zeros(weights.shape)
    gb_all = np.zeros(bias.shape)
    for b in range(batch):
        size = tuple(spatial) if sizes is None else tuple(int(s) for s in sizes[b])
        cells = list(itertools.product(*(range(s) for s in size)))
        for z, sign in enumerate(signs):
            def index(u, sign=sign, size=size):
                return tuple(u[k] if sign[k] > 0 else size[k] - 1 - u[k] for k in range(d))
            chans = slice(z * n, (z + 1) * n)
            xs = np.zeros(size + (x.shape[-1],))
            gh = np.zeros(size + (n,))
            gc = None if grad_c is None else np.zeros(size + (n,))
            for u in cells:
                xs[u] = x[(b,) + index(u)]
                gh[u] = grad_h[(b,) + index(u) + (chans,)]
                if gc is not None:
                    gc[u] = grad_c[(b,) + index(u) + (chans,)]
            gx, gw, gb, _, _ = scan_backward(xs, weights[z], bias[z], gh, gc, variant)
            for u in cells:
                gx_all[(b,) + index(u)] += gx[u]
            gw_all[z] += gw
            gb_all[z] += gb
    return gx_all, gw_all, gb_all
