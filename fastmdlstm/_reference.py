"""Pure-Python (NumPy only) multi-dimensional LSTM forward pass.

This module is the readable statement of the math and the oracle of the kernel
tests. It must never import numba: it is also the fallback where numba is missing.

Notation (d spatial axes, N hidden units, C input channels; the variant
table is _cells.py):

    pre   = [x_p | h_(p - e_0) | ... | h_(p - e_{d-1})] @ W + b
    g     = tanh(pre[0:N])     o = sigma(pre[N:2N])     i = sigma(pre[2N:3N])
    q_k   = sigma(pre[(3+k)N:(4+k)N])   for k < d: the "forget part's" gates,
            f_0 .. f_{d-1}, or ("stable", d = 2) f and lam
    c_p   = g*i + F(q, c_(p - e_0), ..., c_(p - e_{d-1}))   (saturated at +-largest float)
            F = sum_k f_k*c_k ("slstm", "graves"), (1/d) sum_k f_k*c_k ("halved"),
                f*(lam*c_0 + (1-lam)*c_1) ("stable")
    h_p   = tanh(c_p * o)   ("slstm")   or   o * tanh(c_p)   (the others)

The work is vectorised over the batch only; pixels are visited one by one in
raster order, which is a valid scan order because every predecessor p - e_k
comes earlier in it. On request (act_out) the forward also returns every
cell's gate activations [g | o | i | q_0 .. q_{d-1}]: what training keeps
between forward and backward (forward(..., return_gates=True)), so that the
numba backward need not recompute them.

The backward pass (scan_padded_backward, backward) visits the cells in reverse
raster order, so every successor p + e_k has passed its gradient back to p
before p is reached. It recomputes each cell's gates from x and the stored
predecessor states, and checks that the recomputed c and h agree with the
stored ones (h and c must come from the matching forward); gate activations
kept by the forward, when given, are compared with the recomputed ones the
same way (only checked: the gradients are those of the recomputation).
Saturation: where |c_p| equals the largest finite float, the derivative of
c_p with respect to its unclipped value is taken as 0.
"""

import numpy as np

__all__ = ["sigmoid", "scan_padded", "forward", "scan_padded_backward", "backward",
           "MISMATCH_TOL", "mismatch_error"]


def sigmoid(x):
    # 0.5 + 0.5*tanh(x/2) equals 1/(1+exp(-x)) and never overflows.
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _unknown(variant):
    return ValueError(f"unknown variant {variant!r}")


def _raw_cell(variant, gi, gates, c_prev):
    """c before saturation: g*i plus the predecessors' share. gates are the d
    sigmoid blocks after g, o, i (f_0 .. f_{d-1}, or "stable"'s f and lam),
    c_prev the d predecessors' cells. May overflow to +-inf (the caller clips)."""
    if variant in ("slstm", "graves", "halved"):
        # "halved" scales each term (not the sum: that could overflow first)
        scale = 1.0 / len(gates) if variant == "halved" else 1.0
        cell = gi
        for f, cp in zip(gates, c_prev):
            cell = cell + f * cp * scale
        return cell
    if variant == "stable":
        f, lam = gates
        return gi + f * (lam * c_prev[0] + (1 - lam) * c_prev[1])
    raise _unknown(variant)


def _raw_cell_grad(variant, gates, c_prev, dc):
    """Backward of _raw_cell's predecessor share for dL/dc = dc: (the d
    gradients w.r.t. the gates' pre-activations, the d w.r.t. c_prev)."""
    if variant in ("slstm", "graves", "halved"):
        # exact: "halved"'s 1/d reaches the forget gates' gradients too
        scale = 1.0 / len(gates) if variant == "halved" else 1.0
        return ([dc * scale * cp * f * (1 - f) for f, cp in zip(gates, c_prev)],
                [dc * scale * f for f in gates])
    if variant == "stable":
        f, lam = gates
        mixed = lam * c_prev[0] + (1 - lam) * c_prev[1]
        return ([dc * mixed * f * (1 - f), dc * f * (c_prev[0] - c_prev[1]) * lam * (1 - lam)],
                [dc * f * lam, dc * f * (1 - lam)])
    raise _unknown(variant)


def _output(variant, cell, o):
    """h of a cell c with output gate o."""
    if variant == "slstm":
        return np.tanh(cell * o)
    if variant in ("graves", "halved", "stable"):
        return o * np.tanh(cell)
    raise _unknown(variant)


def _output_grad(variant, cell, o, h, dh):
    """Backward of _output for dL/dh = dh: (dL/dc, dL/do) through h only."""
    if variant == "slstm":
        dpre_h = dh * (1 - h * h)  # h = tanh(c*o)
        return dpre_h * o, dpre_h * cell
    if variant in ("graves", "halved", "stable"):
        tanh_c = np.tanh(cell)  # h = o*tanh(c)
        return dh * o * (1 - tanh_c * tanh_c), dh * tanh_c
    raise _unknown(variant)


def _activations(g, o, i, gates):
    """A cell's gate activations in the weights' gate-column order: what the
    forward keeps for the backward (the kernels' pre_out)."""
    return np.concatenate([g, o, i] + list(gates), axis=1)


def scan_padded(x, weights, bias, h, c, variant, act_out=None):
    """One scan from the origin corner, in place over padded state tensors.

    x: (B, *S, C); weights (C + d*N, (3+d)*N); bias ((3+d)*N,);
    h, c: (B, *(S+1), N). Index 0 along each spatial axis holds the boundary
    states (only read); every other entry is overwritten. act_out: optional
    (B, *S, (3+d)*N), filled with each cell's gate activations: tanh of the
    candidate block, sigma of the others (g, o, i, q_0 .. q_{d-1}).
    """
    d = x.ndim - 2
    n = h.shape[-1]
    ch = x.shape[-1]
    w_in = weights[:ch]
    w_rec = [weights[ch + k * n: ch + (k + 1) * n] for k in range(d)]
    unit = np.eye(d, dtype=np.intp)
    for p in np.ndindex(*x.shape[1:-1]):
        q = tuple(pk + 1 for pk in p)  # position in the padded states
        prev = [tuple(np.subtract(q, unit[k])) for k in range(d)]
        pre = x[(slice(None),) + p] @ w_in + bias
        for k in range(d):
            pre = pre + h[(slice(None),) + prev[k]] @ w_rec[k]
        g = np.tanh(pre[:, :n])
        o = sigmoid(pre[:, n:2 * n])
        i = sigmoid(pre[:, 2 * n:3 * n])
        gates = [sigmoid(pre[:, (3 + k) * n:(4 + k) * n]) for k in range(d)]
        if act_out is not None:
            act_out[(slice(None),) + p] = _activations(g, o, i, gates)
        c_prev = [c[(slice(None),) + prev[k]] for k in range(d)]
        # |c| saturates at the largest finite float instead of overflowing
        # (the sum below may overflow first; the clip brings it back).
        with np.errstate(over="ignore", invalid="ignore"):
            cell = _raw_cell(variant, g * i, gates, c_prev)
        big = np.finfo(cell.dtype).max
        cell = np.clip(cell, -big, big)
        c[(slice(None),) + q] = cell
        h[(slice(None),) + q] = _output(variant, cell, o)


def forward(x, weights, bias, variant, signs, sizes, out, cell_out, act_out=None):
    """Every direction over every sample, zero boundary states.

    x (B, *S, C); weights (Z, R, G); bias (Z, G); signs (Z, d) of +-1;
    sizes (B, d) valid extents; out (B, *S, Z*N) and cell_out (same, or None)
    are filled completely (zeros outside each sample's valid region), and so
    is act_out (B, *S, Z*G), or None: the gate activations (scan_padded),
    direction z in columns [z*G, (z+1)*G).
    Samples of equal size are processed together.
    """
    d = x.ndim - 2
    n = weights.shape[2] // (3 + d)
    n_gates = weights.shape[2]
    out[...] = 0
    if cell_out is not None:
        cell_out[...] = 0
    if act_out is not None:
        act_out[...] = 0
    groups = {}
    for b, s in enumerate(sizes):
        groups.setdefault(tuple(int(v) for v in s), []).append(b)
    for size, members in groups.items():
        valid = (members,) + tuple(slice(0, s) for s in size)
        xs = x[valid]
        for z, sign in enumerate(signs):
            # Scanning from another corner = scanning the mirrored region.
            flip = tuple(k + 1 for k in range(d) if sign[k] < 0)
            xz = np.flip(xs, axis=flip) if flip else xs
            shape = (len(members),) + tuple(s + 1 for s in size) + (n,)
            h = np.zeros(shape, dtype=x.dtype)
            c = np.zeros(shape, dtype=x.dtype)
            act = None if act_out is None else np.empty(
                xz.shape[:-1] + (n_gates,), dtype=x.dtype)
            scan_padded(xz, weights[z], bias[z], h, c, variant, act)
            inner = (slice(None),) + (slice(1, None),) * d
            hz, cz = h[inner], c[inner]
            if flip:
                hz, cz = np.flip(hz, axis=flip), np.flip(cz, axis=flip)
            channels = slice(z * n, (z + 1) * n)
            out[valid + (channels,)] = hz
            if cell_out is not None:
                cell_out[valid + (channels,)] = cz
            if act_out is not None:
                columns = slice(z * n_gates, (z + 1) * n_gates)
                act_out[valid + (columns,)] = np.flip(act, axis=flip) if flip else act


# Recomputed vs stored states may differ by rounding only (numba's activations
# vs numpy's: ~1e-6 in float32, ~1e-10 in float64); a wrong h or c differs by far more.
MISMATCH_TOL = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-7}


def mismatch_error(gates=False):
    """The ValueError for h/c that do not come from the matching forward
    (gates: the caller also passed the forward's gates)."""
    if gates:
        return ValueError(
            "h/c/gates do not come from forward(x, weights, bias, ...) with these "
            "arguments: the cells computed from the given gates and the stored "
            "predecessor states give different c or h, or the gates differ from the "
            "recomputed ones (pass the h, c and gates that forward(..., "
            "return_gates=True) returned for this x, weights, bias, variant, "
            "directions and sizes)")
    return ValueError(
        "h/c do not come from forward(x, weights, bias, ...) with these arguments: "
        "recomputing the cells from x, weights, bias and the stored predecessor "
        "states gives different c or h (pass the h and c that forward(..., "
        "return_cell=True) or forward_inplace returned for this x, weights, bias, "
        "variant, directions and sizes)")


def _disagree(recomputed, stored, tol):
    """Whether any entry differs by more than tol * (1 + |stored|) (NaN in
    both counts as agreeing: a NaN input gives NaN states and gradients)."""
    close = np.abs(recomputed - stored) <= tol * (1 + np.abs(stored))
    both_nan = np.isnan(recomputed) & np.isnan(stored)
    return not np.all(close | both_nan)


def scan_padded_backward(x, weights, bias, h, c, grad_h, grad_c, variant, act_kept=None):
    """Backward of scan_padded: gradients of one origin-corner scan.

    x: (B, *S, C); weights (C + d*N, (3+d)*N); bias ((3+d)*N,); h, c:
    (B, *(S+1), N) padded states as scan_padded left them (boundary states at
    index 0 along each axis). grad_h: (B, *S, N), the gradient of the loss
    with respect to the written states h[:, 1:, ..., 1:]; grad_c: the same for
    c, or None (zero). act_kept: the gate activations scan_padded put in
    act_out (B, *S, (3+d)*N), or None; when given, each is compared with the
    recomputed one (mismatch_error beyond the tolerance) and not used otherwise.

    Returns (grad_x (B, *S, C), grad_weights (C + d*N, (3+d)*N),
    grad_bias ((3+d)*N,), grad_h_state, grad_c_state), the last two of the
    padded shape (B, *(S+1), N): the gradients with respect to the boundary
    states (entries with index 0 along some axis; all inner entries are 0).

    Where |c_p| is the largest finite float (saturated), the derivative of c_p
    with respect to its unclipped value is taken as 0. Raises ValueError
    (mismatch_error) if the recomputed c or h of a cell differs from the
    stored one: h and c must come from the forward of these arguments.
    Only new arrays are written.
    """
    d = x.ndim - 2
    n = h.shape[-1]
    ch = x.shape[-1]
    dtype = x.dtype
    big = np.finfo(dtype).max
    tol = MISMATCH_TOL[np.dtype(dtype)]
    w_in = weights[:ch]
    w_rec = [weights[ch + k * n: ch + (k + 1) * n] for k in range(d)]
    unit = np.eye(d, dtype=np.intp)
    inner = (slice(None),) + (slice(1, None),) * d
    # Gradients w.r.t. every state entry, accumulated as successors are visited.
    dh_all = np.zeros(h.shape, dtype=dtype)
    dc_all = np.zeros(c.shape, dtype=dtype)
    dh_all[inner] = grad_h
    if grad_c is not None:
        dc_all[inner] = grad_c
    grad_x = np.zeros(x.shape, dtype=dtype)
    grad_w = np.zeros(weights.shape, dtype=dtype)
    grad_b = np.zeros(bias.shape, dtype=dtype)
    cells = list(np.ndindex(*x.shape[1:-1]))
    with np.errstate(over="ignore", invalid="ignore"):
        for p in reversed(cells):
            q = tuple(pk + 1 for pk in p)
            at_q = (slice(None),) + q
            prev = [(slice(None),) + tuple(np.subtract(q, unit[k])) for k in range(d)]
            # Recompute the forward of this cell from the stored predecessors.
            rows = [x[(slice(None),) + p]] + [h[prev[k]] for k in range(d)]
            pre = rows[0] @ w_in + bias
            for k in range(d):
                pre = pre + rows[1 + k] @ w_rec[k]
            g = np.tanh(pre[:, :n])
            o = sigmoid(pre[:, n:2 * n])
            i = sigmoid(pre[:, 2 * n:3 * n])
            gates = [sigmoid(pre[:, (3 + k) * n:(4 + k) * n]) for k in range(d)]
            c_prev = [c[prev[k]] for k in range(d)]
            cell = np.clip(_raw_cell(variant, g * i, gates, c_prev), -big, big)
            h_new = _output(variant, cell, o)
            if _disagree(cell, c[at_q], tol) or _disagree(h_new, h[at_q], tol) or (
                    act_kept is not None and _disagree(
                        _activations(g, o, i, gates), act_kept[(slice(None),) + p], tol)):
                raise mismatch_error(gates=act_kept is not None)
            dc_h, do = _output_grad(variant, cell, o, h_new, dh_all[at_q])
            # c = saturate(g*i + F(gates, c_prev)) (F: see _raw_cell)
            dc = np.where(np.abs(cell) < big, dc_all[at_q] + dc_h, 0)
            d_gates, dc_prev = _raw_cell_grad(variant, gates, c_prev, dc)
            dpre = np.empty_like(pre)
            dpre[:, :n] = dc * i * (1 - g * g)
            dpre[:, n:2 * n] = do * o * (1 - o)
            dpre[:, 2 * n:3 * n] = dc * g * i * (1 - i)
            for k in range(d):
                dpre[:, (3 + k) * n:(4 + k) * n] = d_gates[k]
                dc_all[prev[k]] += dc_prev[k]
            # pre = [x_p | h_prev_0 | ...] @ W + b
            grad_b += dpre.sum(axis=0)
            grad_w[:ch] += rows[0].T @ dpre
            grad_x[(slice(None),) + p] = dpre @ w_in.T
            for k in range(d):
                grad_w[ch + k * n: ch + (k + 1) * n] += rows[1 + k].T @ dpre
                dh_all[prev[k]] += dpre @ w_rec[k].T
    # What is left at the boundary entries is their gradient; inner ones are done.
    dh_all[inner] = 0
    dc_all[inner] = 0
    return grad_x, grad_w, grad_b, dh_all, dc_all


def backward(x, weights, bias, grad_h, grad_c, h, c, variant, signs, sizes, gates=None):
    """Backward of forward: gradients of every direction over every sample.

    x (B, *S, C); weights (Z, R, G); bias (Z, G); grad_h (B, *S, Z*N) and
    grad_c (the same, or None): gradients of the loss w.r.t. forward's h and c;
    h, c (B, *S, Z*N): what forward(..., return_cell=True) returned for these
    arguments; signs (Z, d); sizes (B, d); gates (B, *S, Z*G) or None: the
    gate activations forward put in act_out, only compared with the
    recomputed ones (scan_padded_backward's act_kept). Boundary states are zero.

    Returns (grad_x (B, *S, C), grad_weights (Z, R, G), grad_bias (Z, G)) in
    x's dtype. Cells outside a sample's valid region get zero grad_x and
    contribute nothing (grad_h, grad_c, h, c and gates there are ignored).
    Saturated cells (|c| the largest float) pass no gradient through their
    clip. Raises ValueError (mismatch_error) if h/c (or gates) do not come
    from the matching forward.
    """
    d = x.ndim - 2
    n = weights.shape[2] // (3 + d)
    n_gates = weights.shape[2]
    dtype = x.dtype
    grad_x = np.zeros(x.shape, dtype=dtype)
    grad_w = np.zeros(weights.shape, dtype=dtype)
    grad_b = np.zeros(bias.shape, dtype=dtype)
    groups = {}
    for b, s in enumerate(sizes):
        groups.setdefault(tuple(int(v) for v in s), []).append(b)
    inner = (slice(None),) + (slice(1, None),) * d
    for size, members in groups.items():
        valid = (members,) + tuple(slice(0, s) for s in size)
        xs = x[valid]
        for z, sign in enumerate(signs):
            flip = tuple(k + 1 for k in range(d) if sign[k] < 0)

            def mirror(a, flip=flip):
                return np.flip(a, axis=flip) if flip else a

            channels = valid + (slice(z * n, (z + 1) * n),)
            shape = (len(members),) + tuple(s + 1 for s in size) + (n,)
            hz = np.zeros(shape, dtype=dtype)
            cz = np.zeros(shape, dtype=dtype)
            hz[inner] = mirror(h[channels])
            cz[inner] = mirror(c[channels])
            gc = None if grad_c is None else mirror(grad_c[channels])
            kept = None if gates is None else mirror(
                gates[valid + (slice(z * n_gates, (z + 1) * n_gates),)])
            gx, gw, gb, _, _ = scan_padded_backward(
                mirror(xs), weights[z], bias[z], hz, cz, mirror(grad_h[channels]), gc,
                variant, kept)
            grad_x[valid] += mirror(gx)
            grad_w[z] += gw
            grad_b[z] += gb
    return grad_x, grad_w, grad_b
