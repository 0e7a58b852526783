"""Numba kernels: the loop bodies of the fused MDLSTM cell update.

Everything here works on a canonical 3-spatial-axis layout: a problem with d
spatial axes (d = 1, 2, 3) is given leading singleton axes, so x is
(B, S0, S1, S2, C) and user axis k is internal axis 3 - d + k. The number of
real axes d, the cell variant and the state layout are runtime parameters of
one compiled body, not pasted copies.

Scan order: cells on the hyperplane t = a + i + j (in scan coordinates, i.e.
after mirroring for the direction) depend only on plane t - 1, so a scan is a
sequence of planes and the cells of one plane are independent. Cells of a plane
are processed in groups of consecutive i at fixed a, so the weight rows are
streamed once per group (a small GEMM), not once per cell.

Two state layouts share the cell code:
- "forward": zero boundary states, h written to out[..., z*N:(z+1)*N]; the
  predecessors come from a rolling buffer of two planes, indexed by (a, i),
  so nothing grows with the image except the output.
- "inplace": the caller's padded tensors (B, *(S+1), N) hold the boundary at
  index 0 of every real axis; states are read and written there.

Floating point: every cell's arithmetic is the same sequence of operations
whatever the thread count, group size or driver, so results are bitwise
reproducible. No fastmath: it would let LLVM reassociate differently in
different call sites.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# error_model="numpy": a float division must not carry a zero-division branch,
# which would stop the activation loops from vectorising.
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}

VARIANTS = {"slstm": 0, "graves": 1}
DEFAULT_GROUP = 8


# --- activations -------------------------------------------------------------
# libm tanh is a scalar call (~12 ns) that blocks vectorisation. Instead:
# tanh(u) = 1 - 2 / (exp(2u) + 1) for u = |x|, with exp(2u) computed as
# P(2u / 2^m) ** (2^m), P the Taylor polynomial of exp, all in float64.
# float32: u <= 10 (tanh(10) = 1 - 4e-9 rounds to 1), m = 7, degree 6:
#   relative error of exp <= 2^7 * 0.157^7/7! ~ 6e-8, so |error| of tanh
#   <= ~3e-8 before the final rounding to float32 (<= 6e-8).
# float64: u <= 20, m = 10, degree 9: |error| ~ 1e-13 (rounding amplified 2^10).
# NaN propagates (the clamp is written so that NaN > c is False keeps NaN).


def fast_tanh(x):
    """tanh with the kernels' accuracy contract (plain math.tanh when not jitted)."""
    return math.tanh(x)


@njit(error_model="numpy")
def _tanh32(x):
    u = abs(np.float64(x))
    u = 10.0 if u > 10.0 else u
    z = u * (2.0 / 128.0)
    p = 1.0 + z * (1.0 + z * (1.0 / 2.0 + z * (1.0 / 6.0 + z * (
        1.0 / 24.0 + z * (1.0 / 120.0 + z * (1.0 / 720.0))))))
    for _ in range(7):
        p = p * p
    t = 1.0 - 2.0 / (p + 1.0)
    return np.float32(-t if x < 0 else t)


@njit(error_model="numpy")
def _tanh64(x):
    u = abs(x)
    u = 20.0 if u > 20.0 else u
    z = u * (2.0 / 1024.0)
    p = 1.0 + z * (1.0 + z * (1.0 / 2.0 + z * (1.0 / 6.0 + z * (
        1.0 / 24.0 + z * (1.0 / 120.0 + z * (1.0 / 720.0 + z * (
            1.0 / 5040.0 + z * (1.0 / 40320.0 + z * (1.0 / 362880.0)))))))))
    for _ in range(10):
        p = p * p
    t = 1.0 - 2.0 / (p + 1.0)
    return -t if x < 0 else t


@overload(fast_tanh)
def _fast_tanh_overload(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    if x == types.float64:
        return lambda x: _tanh64(x)
    return None


def fast_sigmoid(x):
    """sigma(x) = 0.5 + 0.5*tanh(x/2); same accuracy as fast_tanh, halved."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(fast_sigmoid)
def _fast_sigmoid_overload(x):
    if x == types.float32:
        half = np.float32(0.5)
        return lambda x: half + half * _tanh32(half * x)
    if x == types.float64:
        return lambda x: 0.5 + 0.5 * _tanh64(0.5 * x)
    return None


@njit(**_OPTS)
def activation_array(x, out, sigmoid):
    """The kernels' tanh (or sigmoid) elementwise over 1-D x (accuracy tests)."""
    for k in range(x.size):
        out[k] = fast_sigmoid(x[k]) if sigmoid else fast_tanh(x[k])


# --- the fused cell ------------------------------------------------------------


@njit(**_OPTS)
def _preactivation(rows, w, bias, acc, m_cnt):
    """acc[m] = bias + rows[m] @ w for m < m_cnt: each weight row is loaded
    once per group and applied to every cell of it (gate axis innermost)."""
    n_rows, n_gates = w.shape
    for m in range(m_cnt):
        for g in range(n_gates):
            acc[m, g] = bias[g]
    for r in range(n_rows):
        for m in range(m_cnt):
            v = rows[m, r]
            for g in range(n_gates):
                acc[m, g] += v * w[r, g]


@njit(**_OPTS)
def _cell_update(pre, c_prev, d, n, variant, h, c):
    """Gates from the pre-activations `pre` ((3+d)N,), new state into h, c."""
    for r in range(n):
        c[r] = fast_tanh(pre[r]) * fast_sigmoid(pre[2 * n + r])
    for k in range(d):
        base = (3 + k) * n
        for r in range(n):
            c[r] += fast_sigmoid(pre[base + r]) * c_prev[k, r]
    if variant == 0:
        for r in range(n):
            h[r] = fast_tanh(c[r] * fast_sigmoid(pre[n + r]))
    else:
        for r in range(n):
            h[r] = fast_sigmoid(pre[n + r]) * fast_tanh(c[r])


# --- one group of cells on one plane -------------------------------------------


@njit(**_OPTS)
def _axis_coord(u, extent, sign):
    """Array index of scan coordinate u along an axis scanned with `sign`."""
    return u if sign > 0 else extent - 1 - u


@njit(**_OPTS)
def _group(b, z, t, a, i0, m_cnt, x, w, bias, d, n, variant, size, sign,
           inplace, h_state, c_state, roll_h, roll_c, out, cell_out,
           rows, c_prev, acc, h_new, c_new):
    """Cells (a, i, t-a-i) for i in [i0, i0 + m_cnt) of sample b, direction z.

    inplace: h_state/c_state are the caller's padded tensors; otherwise roll_h/
    roll_c (2, S0, S1, N) hold the last two planes of this (b, z) and h goes to
    out (and c to cell_out when it has elements).
    """
    n_in = x.shape[4]
    cur = t & 1
    prv = 1 - cur
    first_real = 3 - d
    # Padding offsets of the caller's tensors: 1 on real axes, 0 on dummies.
    o0 = 1 if first_real <= 0 else 0
    o1 = 1 if first_real <= 1 else 0
    for m in range(m_cnt):
        i = i0 + m
        j = t - a - i
        ax = _axis_coord(a, size[0], sign[0])
        ix = _axis_coord(i, size[1], sign[1])
        jx = _axis_coord(j, size[2], sign[2])
        for r in range(n_in):
            rows[m, r] = x[b, ax, ix, jx, r]
        for k in range(d):
            q = first_real + k
            base = n_in + k * n
            if inplace:
                pa = a + o0 - (1 if q == 0 else 0)
                pi = i + o1 - (1 if q == 1 else 0)
                pj = j + 1 - (1 if q == 2 else 0)
                for r in range(n):
                    rows[m, base + r] = h_state[b, pa, pi, pj, r]
                    c_prev[m, k, r] = c_state[b, pa, pi, pj, r]
                continue
            if q == 0:
                present, pa, pi = a > 0, a - 1, i
            elif q == 1:
                present, pa, pi = i > 0, a, i - 1
            else:
                present, pa, pi = j > 0, a, i
            if present:
                for r in range(n):
                    rows[m, base + r] = roll_h[prv, pa, pi, r]
                    c_prev[m, k, r] = roll_c[prv, pa, pi, r]
            else:
                for r in range(n):
                    rows[m, base + r] = 0
                    c_prev[m, k, r] = 0
    _preactivation(rows, w[z], bias[z], acc, m_cnt)
    for m in range(m_cnt):
        i = i0 + m
        j = t - a - i
        if inplace:
            _cell_update(acc[m], c_prev[m], d, n, variant,
                         h_state[b, a + o0, i + o1, j + 1],
                         c_state[b, a + o0, i + o1, j + 1])
            continue
        _cell_update(acc[m], c_prev[m], d, n, variant, h_new, c_new)
        ax = _axis_coord(a, size[0], sign[0])
        ix = _axis_coord(i, size[1], sign[1])
        jx = _axis_coord(j, size[2], sign[2])
        ch = z * n
        for r in range(n):
            roll_h[cur, a, i, r] = h_new[r]
            roll_c[cur, a, i, r] = c_new[r]
            out[b, ax, ix, jx, ch + r] = h_new[r]
        if cell_out.size:
            for r in range(n):
                cell_out[b, ax, ix, jx, ch + r] = c_new[r]


@njit(**_OPTS)
def _plane_a_range(t, size):
    """Values of a with at least one cell on plane t."""
    lo = t - (size[1] - 1) - (size[2] - 1)
    return max(0, lo), min(size[0] - 1, t)


@njit(**_OPTS)
def _plane_i_range(t, a, size):
    """Inclusive range of i with a cell (a, i, t-a-i) inside the sample."""
    rem = t - a
    return max(0, rem - (size[2] - 1)), min(size[1] - 1, rem)


@njit(**_OPTS)
def _scratch(n_rows, n_gates, d, n, group, dtype_of):
    rows = np.empty((group, n_rows), dtype_of.dtype)
    c_prev = np.empty((group, d, n), dtype_of.dtype)
    acc = np.empty((group, n_gates), dtype_of.dtype)
    h_new = np.empty(n, dtype_of.dtype)
    c_new = np.empty(n, dtype_of.dtype)
    return rows, c_prev, acc, h_new, c_new


# --- drivers -------------------------------------------------------------------
# Arguments common to all drivers:
#   x (B, S0, S1, S2, C); w (Z, C + d*N, (3+d)*N) C-contiguous; bias (Z, G);
#   d; variant (0 slstm, 1 graves); sizes (B, 3) int64; signs (Z, 3) int64;
#   inplace; h_state, c_state (B, P0, P1, P2, N) or empty; out, cell_out
#   (B, S0, S1, S2, Z*N) or empty; group (cells per weight pass).


@njit(**_OPTS)
def _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                 h_state, c_state, out, cell_out, group):
    """The whole scan of one (sample, direction), plane after plane."""
    z_count, n_rows, n_gates = w.shape
    n = n_gates // (3 + d)
    b = bz // z_count
    z = bz % z_count
    size = sizes[b]
    sign = signs[z]
    roll_shape = (2, x.shape[1], x.shape[2], n)
    if inplace:
        roll_shape = (2, 0, 0, n)
    roll_h = np.empty(roll_shape, x.dtype)
    roll_c = np.empty(roll_shape, x.dtype)
    rows, c_prev, acc, h_new, c_new = _scratch(n_rows, n_gates, d, n, group, x)
    for t in range(size[0] + size[1] + size[2] - 2):
        a_lo, a_hi = _plane_a_range(t, size)
        for a in range(a_lo, a_hi + 1):
            i_lo, i_hi = _plane_i_range(t, a, size)
            for i0 in range(i_lo, i_hi + 1, group):
                m_cnt = min(group, i_hi + 1 - i0)
                _group(b, z, t, a, i0, m_cnt, x, w, bias, d, n, variant,
                       size, sign, inplace, h_state, c_state, roll_h, roll_c,
                       out, cell_out, rows, c_prev, acc, h_new, c_new)


@njit(**_OPTS)
def scan_serial(x, w, bias, d, variant, sizes, signs, inplace,
                h_state, c_state, out, cell_out, group):
    """One thread: samples and directions one after the other."""
    for bz in range(x.shape[0] * w.shape[0]):
        _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                     h_state, c_state, out, cell_out, group)


@njit(parallel=True, **_OPTS)
def scan_batch_parallel(x, w, bias, d, variant, sizes, signs, inplace,
                        h_state, c_state, out, cell_out, group):
    """One parallel region: threads share out the (sample, direction) pairs."""
    for bz in prange(x.shape[0] * w.shape[0]):
        _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                     h_state, c_state, out, cell_out, group)


@njit(parallel=True, **_OPTS)
def scan_wavefront(x, w, bias, d, variant, sizes, signs, inplace,
                   h_state, c_state, out, cell_out, group):
    """One parallel region per plane: threads share out the groups of cells of
    plane t over all (sample, direction) pairs (for small batches)."""
    z_count, n_rows, n_gates = w.shape
    n = n_gates // (3 + d)
    pairs = x.shape[0] * z_count
    s0 = x.shape[1]
    n_groups = (x.shape[2] + group - 1) // group
    roll_shape = (pairs, 2, s0, x.shape[2], n)
    if inplace:
        roll_shape = (pairs, 2, 0, 0, n)
    roll_h = np.empty(roll_shape, x.dtype)
    roll_c = np.empty(roll_shape, x.dtype)
    planes = 0
    for b in range(x.shape[0]):
        planes = max(planes, sizes[b, 0] + sizes[b, 1] + sizes[b, 2] - 2)
    items = pairs * s0 * n_groups
    for t in range(planes):
        for item in prange(items):
            bz = item // (s0 * n_groups)
            a = (item // n_groups) % s0
            b = bz // z_count
            z = bz % z_count
            size = sizes[b]
            a_lo, a_hi = _plane_a_range(t, size)
            if t >= size[0] + size[1] + size[2] - 2 or a < a_lo or a > a_hi:
                continue
            i_lo, i_hi = _plane_i_range(t, a, size)
            i0 = max(i_lo, (item % n_groups) * group)
            i1 = min(i_hi + 1, (item % n_groups + 1) * group)
            if i0 >= i1:
                continue
            rows, c_prev, acc, h_new, c_new = _scratch(
                n_rows, n_gates, d, n, group, x)
            _group(b, z, t, a, i0, i1 - i0, x, w, bias, d, n, variant,
                   size, signs[z], inplace, h_state, c_state, roll_h[bz],
                   roll_c[bz], out, cell_out, rows, c_prev, acc, h_new, c_new)


DRIVERS = {
    "serial": scan_serial,
    "batch": scan_batch_parallel,
    "wavefront": scan_wavefront,
}


# --- kernel-level entry point for users' own @njit code --------------------------


@njit(**_OPTS)
def forward_inplace_2d(x, weights, bias, h, c, variant):
    """One "tl" scan of a 2-D spatial LSTM, in place, callable from @njit code.

    x (B, H, W, C); weights (C + 2N, 5N) C-contiguous; bias (5N,);
    h, c (B, H+1, W+1, N) C-contiguous, boundary states in row 0 and column 0;
    variant 0 ("slstm") or 1 ("graves"). All arrays of one float dtype.
    No argument checks: the caller guarantees shapes and dtypes (the Python
    function fastmdlstm.forward_inplace checks them). Runs on one thread.
    """
    b_count = x.shape[0]
    sizes = np.empty((b_count, 3), np.int64)
    for b in range(b_count):
        sizes[b, 0] = 1
        sizes[b, 1] = x.shape[1]
        sizes[b, 2] = x.shape[2]
    signs = np.ones((1, 3), np.int64)
    g = weights.shape[1]
    empty = np.empty((0, 0, 0, 0, 0), x.dtype)
    # Canonical layout: a leading singleton spatial axis (not padded).
    xc = np.ascontiguousarray(x)
    scan_serial(xc.reshape((b_count, 1) + x.shape[1:]),
                weights.reshape((1,) + weights.shape), bias.reshape((1, g)),
                2, variant, sizes, signs, True,
                h.reshape((b_count, 1) + h.shape[1:]),
                c.reshape((b_count, 1) + c.shape[1:]),
                empty, empty, DEFAULT_GROUP)
