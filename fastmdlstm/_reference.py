"""Pure-Python (NumPy only) multi-dimensional LSTM forward pass.

This module is the readable statement of the math and the oracle of the kernel
tests. It must never import numba: it is also the fallback where numba is missing.

Notation (d spatial axes, N hidden units, C input channels):

    pre   = [x_p | h_(p - e_0) | ... | h_(p - e_{d-1})] @ W + b
    g     = tanh(pre[0:N])     o = sigma(pre[N:2N])     i = sigma(pre[2N:3N])
    f_k   = sigma(pre[(3+k)N:(4+k)N])                   for each axis k
    c_p   = g*i + sum_k f_k * c_(p - e_k)     (saturated at +-largest float)
    h_p   = tanh(c_p * o)      ("slstm")   or   o * tanh(c_p)   ("graves")

The work is vectorised over the batch only; pixels are visited one by one in
raster order, which is a valid scan order because every predecessor p - e_k
comes earlier in it.
"""

import numpy as np

__all__ = ["sigmoid", "scan_padded", "forward"]


def sigmoid(x):
    # 0.5 + 0.5*tanh(x/2) equals 1/(1+exp(-x)) and never overflows.
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def scan_padded(x, weights, bias, h, c, variant):
    """One scan from the origin corner, in place over padded state tensors.

    x: (B, *S, C); weights (C + d*N, (3+d)*N); bias ((3+d)*N,);
    h, c: (B, *(S+1), N). Index 0 along each spatial axis holds the boundary
    states (only read); every other entry is overwritten.
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
        cell = g * i
        # |c| saturates at the largest finite float instead of overflowing
        # (the sum below may overflow first; the clip brings it back).
        with np.errstate(over="ignore"):
            for k in range(d):
                f = sigmoid(pre[:, (3 + k) * n:(4 + k) * n])
                cell = cell + f * c[(slice(None),) + prev[k]]
        big = np.finfo(cell.dtype).max
        cell = np.clip(cell, -big, big)
        c[(slice(None),) + q] = cell
        if variant == "slstm":
            h[(slice(None),) + q] = np.tanh(cell * o)
        else:
            h[(slice(None),) + q] = o * np.tanh(cell)


def forward(x, weights, bias, variant, signs, sizes, out, cell_out):
    """Every direction over every sample, zero boundary states.

    x (B, *S, C); weights (Z, R, G); bias (Z, G); signs (Z, d) of +-1;
    sizes (B, d) valid extents; out (B, *S, Z*N) and cell_out (same, or None)
    are filled completely (zeros outside each sample's valid region).
    Samples of equal size are processed together.
    """
    d = x.ndim - 2
    n = weights.shape[2] // (3 + d)
    out[...] = 0
    if cell_out is not None:
        cell_out[...] = 0
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
            scan_padded(xz, weights[z], bias[z], h, c, variant)
            inner = (slice(None),) + (slice(1, None),) * d
            hz, cz = h[inner], c[inner]
            if flip:
                hz, cz = np.flip(hz, axis=flip), np.flip(cz, axis=flip)
            channels = slice(z * n, (z + 1) * n)
            out[valid + (channels,)] = hz
            if cell_out is not None:
                cell_out[valid + (channels,)] = cz
