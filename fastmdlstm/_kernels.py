"""Numba kernels: the loop bodies of the fused MDLSTM cell update.

Everything here works on a canonical 3-spatial-axis layout: a problem with d
spatial axes (d = 1, 2, 3) is given leading singleton axes, so x is
(B, S0, S1, S2, C) and user axis k is internal axis 3 - d + k. The number of
real axes d, the cell variant and the state layout are runtime parameters of
one compiled body, not pasted copies.

Scan order: cell (a, i, j) (scan coordinates, i.e. after mirroring for the
direction) needs (a-1, i, j), (a, i-1, j) and (a, i, j-1), so the cells of a
hyperplane t = a + i + j are independent given plane t - 1. Cells are
processed in groups of consecutive i at fixed a and t, so the weight rows are
streamed once per group (a small GEMM), not once per cell. Two orders of the
groups:
- strips (one thread per scan: serial and batch drivers): slice a after slice
  a; in a slice, strips of `group` rows of i, each swept along its own
  anti-diagonals. A strip reads and writes `group` rows that advance one
  column per step, sequential streams the hardware prefetcher follows; whole
  anti-diagonals jump a row per cell and made the writes of `out` miss cache
  (a seventh of the run time on the 64x64 benchmark).
- tiles (wavefront driver, 1-D/2-D): runs of steps of the strips, the tiles
  of one tile diagonal shared out between threads; planes (wavefront driver,
  3-D): plane t of every scan at once, its groups shared out.

Two state layouts share the cell code:
- "forward": zero boundary states, h written to out[..., z*N:(z+1)*N]; the
  predecessors come from a small rolling buffer (see _roll_pos), so nothing
  grows with the image except the output.
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

from ._dispatch import GROUP, ring_rows, tile_blocks
from ._lowlevel import VEC_BYTES, borrow, keep_alive, vfma, vload, vsplat, vstore

# error_model="numpy": a float division must not carry a zero-division branch,
# which would stop the activation loops from vectorising.
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}
# Numba-level inlining for the per-group body and the per-cell update: a call
# passes 7 words per array, and LLVM judged the bodies too big to inline
# (~8% and ~3% on digits).
_INLINE = dict(_OPTS, inline="always")

VARIANTS = {"slstm": 0, "graves": 1}
DEFAULT_GROUP = GROUP


# --- activations -------------------------------------------------------------
# libm tanh/exp are scalar calls (~12 ns) that block vectorisation.
#   tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1 (1 - e is exact
#     enough near 0 this way, and nothing overflows);
#   sigma(x) = 1 / (1 + exp(-x)), x clamped to [-40, 40] in float32: no sign
#     select, and exp(40) is finite (float64 keeps e / (1 + e) for x < 0).
# exp by range reduction y = k ln2 + r, |r| <= ln2/2: k = round(y / ln2) is
#   read from the low bits of y / ln2 + 1.5 * 2^23 (2^52 in float64), ln2 is
#   split in two so that k * ln2_hi is exact, 2^k is built from its bits.
# float32, in float32 (8 or 16 lanes): a degree-6 near-minimax polynomial
#   (relative error 1.9e-9 before rounding; Taylor needs degree 7 for 7e-9),
#   fitted to exp by least squares on relative error at 2000 Chebyshev nodes
#   of [-0.347, 0.347] with Lawson reweighting, rounded to float32.
#   The reduction's own rounding is damped by de/dy = e, so the error is a
#   few float32 ulps: max 8.9e-8 for both gates, contract 5e-7 (tested on a
#   dense grid and random bit patterns).
# float64: a degree-11 Taylor polynomial (relative error 6e-15 before
#   rounding): activations within 4.2e-15 of libm.
# Clamps: tanh(9) and sigma(17) round to 1 in float32; NaN survives the clamp
# (NaN > c is False) and the polynomial. "contract" lets LLVM use FMAs; the
# same instructions run whatever the caller, so results stay reproducible.
_ACT = {"error_model": "numpy", "fastmath": {"contract"}}
_F32 = np.float32
_ONE32, _TANH_CLAMP32, _SIG_CLAMP32 = _F32(1), _F32(9), _F32(40)
_LOG2E32 = _F32(1.4426950408889634)
_LN2_HI32 = _F32(0.693145751953125)  # few mantissa bits: k * _LN2_HI32 is exact
_LN2_LO32 = _F32(1.4286067653302e-06)
_EXP_POLY32 = tuple(_F32(c) for c in (1.0, 1.0, 0.49999991059303284, 0.16666419804096222,
                                        0.041668232530355453, 0.008374898694455624,
                                        0.001383673632517457))
_EXP_SHIFT32 = _F32(1.5 * 2**23)
_EXP_BIAS32 = np.int32(127 - 0x4B400000)  # exponent bias minus the bits of 1.5 * 2**23
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 6.93147180369123816490e-01  # 21 trailing zero bits: k * _LN2_HI64 is exact
_LN2_LO64 = 1.90821492927058770002e-10
_EXP_TAYLOR64 = tuple(1.0 / math.factorial(k) for k in range(12))
_EXP_SHIFT64 = 1.5 * 2**52
_EXP_BIAS64 = np.int64(1023 - 0x4338000000000000)  # bias minus the bits of 1.5 * 2**52


def fast_tanh(x):
    """tanh with the kernels' accuracy contract (plain math.tanh when not jitted)."""
    return math.tanh(x)


def fast_sigmoid(x):
    """The logistic function, same contract (plain Python when not jitted)."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@njit(**_ACT)
def _exp32(y):
    """exp(y) for float32 y in [-40, 40]."""
    t = y * _LOG2E32 + _EXP_SHIFT32  # 1.5 * 2**23 + round(y / ln2): k in t's low bits
    k = t - _EXP_SHIFT32
    r = (y - k * _LN2_HI32) - k * _LN2_LO32
    c = _EXP_POLY32
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * c[6])))))
    two_k = np.int32((np.float32(t).view(np.int32) + _EXP_BIAS32) << 23).view(np.float32)
    return p * two_k


@njit(**_ACT)
def _exp_neg64(y):
    """exp(y) for float64 y in [-40, 0]."""
    t = y * _LOG2E64 + _EXP_SHIFT64  # 1.5 * 2**52 + round(y / ln2): k in t's low bits
    k = t - _EXP_SHIFT64
    r = (y - k * _LN2_HI64) - k * _LN2_LO64
    c = _EXP_TAYLOR64
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (
        c[6] + r * (c[7] + r * (c[8] + r * (c[9] + r * (c[10] + r * c[11]))))))))))
    two_k = np.int64((np.float64(t).view(np.int64) + _EXP_BIAS64) << 52).view(np.float64)
    return p * two_k


@njit(**_ACT)
def _tanh32(x):
    u = abs(x)
    u = _TANH_CLAMP32 if u > _TANH_CLAMP32 else u
    e = _exp32(-(u + u))
    t = (_ONE32 - e) / (_ONE32 + e)
    return -t if x < 0 else t


@njit(**_ACT)
def _sigmoid32(x):
    x = _SIG_CLAMP32 if x > _SIG_CLAMP32 else x
    x = -_SIG_CLAMP32 if x < -_SIG_CLAMP32 else x
    return _ONE32 / (_ONE32 + _exp32(-x))


@njit(**_ACT)
def _tanh64(x):
    u = abs(x)
    u = 20.0 if u > 20.0 else u
    e = _exp_neg64(-(u + u))
    t = (1.0 - e) / (1.0 + e)
    return -t if x < 0 else t


@njit(**_ACT)
def _sigmoid64(x):
    u = abs(x)
    u = 40.0 if u > 40.0 else u
    e = _exp_neg64(-u)
    s = 1.0 / (1.0 + e)
    return s if x >= 0 else e * s


def saturate(x):
    """x clipped to the finite range of its float type (NaN stays NaN)."""
    big = np.finfo(type(x)).max if isinstance(x, np.floating) else np.finfo(float).max
    return big if x > big else (-big if x < -big else x)


@overload(saturate)
def _saturate_overload(x):
    if x == types.float32:
        big32 = np.float32(np.finfo(np.float32).max)
        return lambda x: big32 if x > big32 else (-big32 if x < -big32 else x)
    if x == types.float64:
        big64 = np.finfo(np.float64).max
        return lambda x: big64 if x > big64 else (-big64 if x < -big64 else x)
    return None


@overload(fast_tanh)
def _fast_tanh_overload(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    if x == types.float64:
        return lambda x: _tanh64(x)
    return None


@overload(fast_sigmoid)
def _fast_sigmoid_overload(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)
    if x == types.float64:
        return lambda x: _sigmoid64(x)
    return None


@njit(**_OPTS)
def activation_array(x, out, sigmoid):
    """The kernels' tanh (or sigmoid) elementwise over 1-D x (accuracy tests)."""
    for k in range(x.size):
        out[k] = fast_sigmoid(x[k]) if sigmoid else fast_tanh(x[k])


# --- the fused cell ------------------------------------------------------------


@njit(**_ACT)
def _preactivation(rows, w, bias, z, acc, m_cnt):
    """acc[m] = bias[z] + rows[m] @ w[z] for m < m_cnt.

    A GEMM micro-kernel: a tile of 8 (AVX-512: 32 registers) or 4 cells x 2
    vectors of gates is accumulated in registers over all rows, then stored
    once; each weight vector is loaded once per tile. 16 accumulators keep
    both FMA pipes busy through the FMA latency: 8 x 2 tiles ran at 230-250
    GFLOP/s on one Zen 5 core, 4 x 2 at 150-210 (zmm peak measured 262).
    Leftover cells take 4 x 2 and 1 x 2 tiles, leftover gates 1 x 1 vector
    tiles and then a loop along the gate axis. Every path computes each acc
    element as the same chain, bias then one fma per row in row order, so
    tiling never changes a result.
    """
    n_rows, n_gates = w.shape[1], w.shape[2]
    lanes = VEC_BYTES // rows.itemsize
    g = 0
    while g + 2 * lanes <= n_gates:
        m = 0
        while WIDE_TILES and m + 8 <= m_cnt:
            _tile_8x2(rows, m, w, bias, z, g, lanes, acc)
            m += 8
        while m + 4 <= m_cnt:
            _tile_4x2(rows, m, w, bias, z, g, lanes, acc)
            m += 4
        while m < m_cnt:
            _tile_1x2(rows, m, w, bias, z, g, lanes, acc)
            m += 1
        g += 2 * lanes
    while g + lanes <= n_gates:
        for m in range(m_cnt):
            _tile_1x1(rows, m, w, bias, z, g, acc)
        g += lanes
    if g == n_gates:
        return
    # Fewer than `lanes` gates left: a loop along the gate axis, cells inner so
    # that their chains through acc overlap instead of waiting on each other.
    tail = n_gates - g
    for m in range(m_cnt):
        acc_tail, bias_tail = acc[m, g:], bias[z, g:]
        for col in range(tail):
            acc_tail[col] = bias_tail[col]
    for r in range(n_rows):
        w_tail = w[z, r, g:]
        for m in range(m_cnt):
            v, acc_tail = rows[m, r], acc[m, g:]
            for col in range(tail):
                acc_tail[col] += v * w_tail[col]


# Tiles of _preactivation. w, bias, acc are C-contiguous; offsets are flat.
WIDE_TILES = VEC_BYTES == 64  # 8 x 2 tiles need 16 + 2 + 1 vector registers


@njit(**_ACT)
def _tile_8x2(rows, m, w, bias, z, g, lanes, acc):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    a0 = vload(bias, z * n_gates + g)
    b0 = vload(bias, z * n_gates + g + lanes)
    a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
    b1, b2, b3, b4, b5, b6, b7 = b0, b0, b0, b0, b0, b0, b0
    for r in range(n_rows):
        w0 = vload(w, at)
        w1 = vload(w, at + lanes)
        at += n_gates
        a0, b0 = _fma2(rows[m, r], w0, w1, a0, b0)
        a1, b1 = _fma2(rows[m + 1, r], w0, w1, a1, b1)
        a2, b2 = _fma2(rows[m + 2, r], w0, w1, a2, b2)
        a3, b3 = _fma2(rows[m + 3, r], w0, w1, a3, b3)
        a4, b4 = _fma2(rows[m + 4, r], w0, w1, a4, b4)
        a5, b5 = _fma2(rows[m + 5, r], w0, w1, a5, b5)
        a6, b6 = _fma2(rows[m + 6, r], w0, w1, a6, b6)
        a7, b7 = _fma2(rows[m + 7, r], w0, w1, a7, b7)
    out = m * n_gates + g
    _store2(acc, out, lanes, a0, b0)
    _store2(acc, out + n_gates, lanes, a1, b1)
    _store2(acc, out + 2 * n_gates, lanes, a2, b2)
    _store2(acc, out + 3 * n_gates, lanes, a3, b3)
    _store2(acc, out + 4 * n_gates, lanes, a4, b4)
    _store2(acc, out + 5 * n_gates, lanes, a5, b5)
    _store2(acc, out + 6 * n_gates, lanes, a6, b6)
    _store2(acc, out + 7 * n_gates, lanes, a7, b7)


@njit(**_ACT)
def _fma2(x, w0, w1, a, b):
    """(x * w0 + a, x * w1 + b) for a scalar x: one row's step of one cell."""
    v = vsplat(x)
    return vfma(v, w0, a), vfma(v, w1, b)


@njit(**_ACT)
def _store2(acc, at, lanes, a, b):
    vstore(acc, at, a)
    vstore(acc, at + lanes, b)


@njit(**_ACT)
def _tile_4x2(rows, m, w, bias, z, g, lanes, acc):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c00 = vload(bias, z * n_gates + g)
    c01 = vload(bias, z * n_gates + g + lanes)
    c10, c11, c20, c21, c30, c31 = c00, c01, c00, c01, c00, c01
    for r in range(n_rows):
        w0 = vload(w, at)
        w1 = vload(w, at + lanes)
        at += n_gates
        c00, c01 = _fma2(rows[m, r], w0, w1, c00, c01)
        c10, c11 = _fma2(rows[m + 1, r], w0, w1, c10, c11)
        c20, c21 = _fma2(rows[m + 2, r], w0, w1, c20, c21)
        c30, c31 = _fma2(rows[m + 3, r], w0, w1, c30, c31)
    out = m * n_gates + g
    _store2(acc, out, lanes, c00, c01)
    _store2(acc, out + n_gates, lanes, c10, c11)
    _store2(acc, out + 2 * n_gates, lanes, c20, c21)
    _store2(acc, out + 3 * n_gates, lanes, c30, c31)


@njit(**_ACT)
def _tile_1x2(rows, m, w, bias, z, g, lanes, acc):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c0 = vload(bias, z * n_gates + g)
    c1 = vload(bias, z * n_gates + g + lanes)
    for r in range(n_rows):
        c0, c1 = _fma2(rows[m, r], vload(w, at), vload(w, at + lanes), c0, c1)
        at += n_gates
    _store2(acc, m * n_gates + g, lanes, c0, c1)


@njit(**_ACT)
def _tile_1x1(rows, m, w, bias, z, g, acc):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c0 = vload(bias, z * n_gates + g)
    for r in range(n_rows):
        c0 = vfma(vsplat(rows[m, r]), vload(w, at), c0)
        at += n_gates
    vstore(acc, m * n_gates + g, c0)


@njit(**_INLINE)
def _cell_update(gates, c_prev, d, n, variant, h, c):
    """Gates from the pre-activations gates ((3+d)N,) and the predecessors'
    cells c_prev (d, N); the new state into h, c (N,).

    Every loop runs over r in range(n) on views: an index like gates[k*n + r]
    is not provably >= 0, so Numba's negative-index fix-up made LLVM vectorise
    such loops with gathers and scatters.
    """
    cand, out_gate, in_gate = gates[:n], gates[n:2 * n], gates[2 * n:3 * n]
    for r in range(n):
        c[r] = fast_tanh(cand[r]) * fast_sigmoid(in_gate[r])
    for k in range(d):
        forget, before = gates[(3 + k) * n:(4 + k) * n], c_prev[k]
        for r in range(n):
            c[r] += fast_sigmoid(forget[r]) * before[r]
    # Saturate instead of overflowing: two forget-gated predecessors can make
    # |c| grow geometrically along a scan; at +-inf, c_up - c_left could give
    # NaN from finite inputs.
    for r in range(n):
        c[r] = saturate(c[r])
    if variant == 0:
        for r in range(n):
            h[r] = fast_tanh(c[r] * fast_sigmoid(out_gate[r]))
    else:
        for r in range(n):
            h[r] = fast_sigmoid(out_gate[r]) * fast_tanh(c[r])


@njit(**_OPTS)
def _copy(src, dst):
    for r in range(dst.size):
        dst[r] = src[r]


@njit(**_OPTS)
def _copy2(src_a, src_b, dst_a, dst_b):
    """dst_a[:] = src_a; dst_b[:] = src_b (one loop: both rows are short)."""
    for r in range(dst_a.size):
        dst_a[r] = src_a[r]
        dst_b[r] = src_b[r]


# --- one group of cells on one plane -------------------------------------------


@njit(**_OPTS)
def _axis_coord(u, extent, sign):
    """Array index of scan coordinate u along an axis scanned with `sign`."""
    return u if sign > 0 else extent - 1 - u


@njit(**_INLINE)
def _group(b, z, t, a, i0, m_cnt, split, shift, x, w, bias, d, n, variant, sizes, signs,
           inplace, h_state, c_state, slot, ring, roll_h, roll_c, out, cell_out,
           rows, c_prev, acc, h_new, c_new):
    """Cells (a, i, j) for i in [i0, i0 + m_cnt) of sample b, direction z, with
    j = t - a - i, plus `shift` from row `split` on (the rows from `split` on
    belong to the next strip, which trails behind: see _scan_sample).

    inplace: h_state/c_state are the caller's padded tensors; otherwise
    roll_h[slot]/roll_c[slot] hold the recent states of this (b, z), placed by
    _roll_pos(ring, ...), and h goes to out (and c to cell_out when it has
    elements).
    """
    n_in = x.shape[4]
    s1_all = x.shape[2]
    first_real = 3 - d
    # Padding offsets of the caller's tensors: 1 on real axes, 0 on dummies.
    o0 = 1 if first_real <= 0 else 0
    o1 = 1 if first_real <= 1 else 0
    s0, s1, s2 = _extents(sizes, b, d)
    g0, g1, g2 = _extents(signs, z, d)
    ax = _axis_coord(a, s0, g0)
    # Views, never offset indices (see _cell_update); they are borrowed, so free.
    for m in range(m_cnt):
        i = i0 + m
        j = t - a - i + (shift if i >= split else 0)
        row = rows[m]
        _copy(x[b, ax, _axis_coord(i, s1, g1), _axis_coord(j, s2, g2)], row[:n_in])
        for k in range(d):
            q = first_real + k
            h_dst = row[n_in + k * n:n_in + (k + 1) * n]
            if inplace:
                pa = a + o0 - (1 if q == 0 else 0)
                pi = i + o1 - (1 if q == 1 else 0)
                pj = j + 1 - (1 if q == 2 else 0)
                _copy2(h_state[b, pa, pi, pj], c_state[b, pa, pi, pj], h_dst, c_prev[m, k])
                continue
            if q == 0:
                present, pa, pi, pj = a > 0, a - 1, i, j
            elif q == 1:
                present, pa, pi, pj = i > 0, a, i - 1, j
            else:
                present, pa, pi, pj = j > 0, a, i, j - 1
            if present:
                p, u = _roll_pos(ring, t - 1, pa, pi, pj, s1_all)
                _copy2(roll_h[slot, p, u], roll_c[slot, p, u], h_dst, c_prev[m, k])
            else:
                h_dst[:] = 0
                c_prev[m, k, :] = 0
    _preactivation(rows, w, bias, z, acc, m_cnt)
    ch = z * n
    for m in range(m_cnt):
        i = i0 + m
        j = t - a - i + (shift if i >= split else 0)
        _cell_update(acc[m], c_prev[m], d, n, variant, h_new, c_new)
        if inplace:
            pa, pi, pj = a + o0, i + o1, j + 1
            _copy2(h_new, c_new, h_state[b, pa, pi, pj], c_state[b, pa, pi, pj])
            continue
        ix = _axis_coord(i, s1, g1)
        jx = _axis_coord(j, s2, g2)
        p, u = _roll_pos(ring, t, a, i, j, s1_all)
        _copy2(h_new, c_new, roll_h[slot, p, u], roll_c[slot, p, u])
        _copy(h_new, out[b, ax, ix, jx, ch:ch + n])
        if cell_out.size:
            _copy(c_new, cell_out[b, ax, ix, jx, ch:ch + n])


@njit(**_OPTS)
def _extents(rows, k, d):
    """Row k of a (M, d) array of sizes or signs on the canonical three axes
    (1 on the leading dummy axes: extent 1, sign +1)."""
    off = 3 - d
    return (rows[k, 0] if off == 0 else 1,
            rows[k, 1 - off] if off <= 1 else 1,
            rows[k, 2 - off])


@njit(**_OPTS)
def _plane_a_range(t, s0, s1, s2):
    """Inclusive range of a with at least one cell on plane t."""
    return max(0, t - (s1 - 1) - (s2 - 1)), min(s0 - 1, t)


@njit(**_OPTS)
def _plane_i_range(t, a, s1, s2):
    """Inclusive range of i with a cell (a, i, t-a-i) inside the sample."""
    rem = t - a
    return max(0, rem - (s2 - 1)), min(s1 - 1, rem)


@njit(**_OPTS)
def _roll_pos(ring, t, a, i, j, s1_all):
    """Where the states of cell (a, i, j) on plane t live in a rolling buffer.

    ring == 0 (plane order): the last two planes, at [t % 2, a * S1 + i].
    ring > 0 (strip or tile order): the last `ring` rows of cells, at
    [(a * S1 + i) % ring, j] (ring_rows). In 2-D one row: slot j holds the
    latest cell of column j. Cell (i, j) reads slots j (the cell above) and
    j - 1 (the cell to the left), and the next cell of column j - 1,
    (i + 1, j - 1), must not have overwritten it: within a strip it is in the
    same group (gathers come before writes); when it opens the next strip, the
    strip orders run it at the same step or later (_scan_sample's lag >=
    group) or on a later tile diagonal (_wavefront_tiles). In 3-D the slice
    before is needed too: S1 + group rows, strips not overlapping.
    """
    if ring == 0:
        return t & 1, a * s1_all + i
    return (a * s1_all + i) % ring, j


_ring_rows = njit(**_OPTS)(ring_rows)  # the API's memory estimate uses it too


@njit(**_OPTS)
def _roll_buffers(pairs, x, n, inplace, ring):
    """h ([0]) and c ([1]) of the recent cells of each (sample, direction),
    (2, pairs, P, Q, N) in _roll_pos's layout; empty in the inplace layout,
    whose states live in the caller's tensors."""
    if inplace:
        return np.empty((2, pairs, 0, 0, n), x.dtype)
    if ring == 0:
        return np.empty((2, pairs, 2, x.shape[1] * x.shape[2], n), x.dtype)
    return np.empty((2, pairs, ring, x.shape[3], n), x.dtype)


@njit(**_OPTS)
def _scratch_size(n_rows, n_gates, d, n, group, itemsize):
    """Elements of one scratch buffer for _scratch."""
    return group * (n_rows + d * n + n_gates) + 2 * n + 64 // itemsize


@njit(**_OPTS)
def _scratch(buf, n_rows, n_gates, d, n, group):
    """rows, c_prev, acc, h_new, c_new carved out of buf (_scratch_size
    elements); acc, written a vector at a time, starts on a cache line."""
    skip = (-buf.ctypes.data % 64) // buf.itemsize
    at = skip + group * n_gates
    acc = buf[skip:at].reshape((group, n_gates))
    rows = buf[at:at + group * n_rows].reshape((group, n_rows))
    at += group * n_rows
    c_prev = buf[at:at + group * d * n].reshape((group, d, n))
    at += group * d * n
    return rows, c_prev, acc, buf[at:at + n], buf[at + n:at + 2 * n]


# --- drivers -------------------------------------------------------------------
# Arguments common to all drivers:
#   x (B, S0, S1, S2, C); w (Z, C + d*N, (3+d)*N) C-contiguous; bias (Z, G);
#   d; variant (0 slstm, 1 graves); sizes (B, d) int64; signs (Z, d) int64;
#   inplace; h_state, c_state (B, P0, P1, P2, N) or empty; out, cell_out
#   (B, S0, S1, S2, Z*N) or empty; group (cells per weight pass); threads (the
#   numba thread count: the wavefront driver splits each plane into that many
#   chunks; numba.get_num_threads() inside a kernel would stop it being cached).


@njit(**_OPTS)
def _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                 h_state, c_state, out, cell_out, group):
    """The whole scan of one (sample, direction) in strip order: slice a after
    slice a, strips of `group` rows of i, each swept along its anti-diagonals
    (one group of cells per step).

    A strip's first and last group - 1 steps hold fewer cells than it has
    rows. In 2-D the next strip starts `lag` = S2 steps after the previous
    one, so its first steps (top rows) share a group with the previous strip's
    last steps (bottom rows): full groups instead of two ramps. Its row i0
    needs row i0 - 1 at column j, which the previous strip did at its step
    group - 1 + j, before this strip's step j + lag. (In 3-D the strips of a
    slice do not overlap: the ring of rows would not hold both strips and
    the slice before them.)"""
    z_count, n_rows, n_gates = w.shape
    n = n_gates // (3 + d)
    b = bz // z_count
    z = bz % z_count
    s0, s1, s2 = _extents(sizes, b, d)
    ring = _ring_rows(x.shape[1], x.shape[2], group)
    roll_owner = _roll_buffers(1, x, n, inplace, ring)
    scratch_owner = np.empty(_scratch_size(n_rows, n_gates, d, n, group, x.itemsize), x.dtype)
    roll = borrow(roll_owner)
    roll_h, roll_c = roll[0], roll[1]
    rows, c_prev, acc, h_new, c_new = _scratch(borrow(scratch_owner), n_rows, n_gates, d, n,
                                               group)
    lag = max(s2, group) if s0 == 1 else s2 + group  # >= group + s2 - 1: no overlap
    strips = (s1 + group - 1) // group
    steps = (strips - 1) * lag + (s1 - (strips - 1) * group) + s2 - 1
    for a in range(s0):
        for step in range(steps):
            k = step // lag  # the newest strip begun, at its step u
            first, u = k * group, step - k * lag
            i_lo, i_hi = first + max(0, u - (s2 - 1)), min(first + group - 1, s1 - 1, first + u)
            t, shift = a + first + u, 0
            u_prev = u + lag  # the strip before, if still going, adds its last rows
            if k > 0 and u_prev <= group + s2 - 2:
                i_lo = first - group + u_prev - (s2 - 1)
                t, shift = a + first - group + u_prev, t - (a + first - group + u_prev)
            if i_lo <= i_hi:
                _group(b, z, t, a, i_lo, i_hi + 1 - i_lo, first, shift, x, w, bias, d, n,
                       variant, sizes, signs, inplace, h_state, c_state, 0, ring, roll_h,
                       roll_c, out, cell_out, rows, c_prev, acc, h_new, c_new)
    keep_alive(roll_owner)
    keep_alive(scratch_owner)


@njit(**_OPTS)
def _scan_steps(b, z, i_first, i_last, s2, u_first, u_last, x, w, bias, d, n, variant, sizes,
                signs, inplace, h_state, c_state, slot, ring, roll_h, roll_c, out, cell_out,
                rows, c_prev, acc, h_new, c_new):
    """Steps u_first..u_last of the strip of rows i_first..i_last of a 2-D
    scan s2 columns wide: step u is the anti-diagonal (i - i_first) + j = u."""
    for u in range(u_first, min(u_last, i_last - i_first + s2 - 1) + 1):
        i0 = max(i_first, i_first + u - (s2 - 1))
        _group(b, z, i_first + u, 0, i0, min(i_last, i_first + u) + 1 - i0, i_last + 1, 0,
               x, w, bias, d, n, variant, sizes, signs, inplace, h_state, c_state, slot, ring,
               roll_h, roll_c, out, cell_out, rows, c_prev, acc, h_new, c_new)


@njit(**_OPTS)
def _borrow_args(x, w, bias, sizes, signs, h_state, c_state, out, cell_out):
    """Borrowed views of a driver's arrays, which its caller keeps alive."""
    return (borrow(x), borrow(w), borrow(bias), borrow(sizes), borrow(signs),
            borrow(h_state), borrow(c_state), borrow(out), borrow(cell_out))


@njit(**_OPTS)
def scan_serial(x, w, bias, d, variant, sizes, signs, inplace,
                h_state, c_state, out, cell_out, group, threads):
    """One thread: samples and directions one after the other."""
    x, w, bias, sizes, signs, h_state, c_state, out, cell_out = _borrow_args(
        x, w, bias, sizes, signs, h_state, c_state, out, cell_out)
    for bz in range(x.shape[0] * w.shape[0]):
        _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                     h_state, c_state, out, cell_out, group)


@njit(parallel=True, **_OPTS)
def scan_batch_parallel(x, w, bias, d, variant, sizes, signs, inplace,
                        h_state, c_state, out, cell_out, group, threads):
    """One parallel region: threads share out the (sample, direction) pairs."""
    x, w, bias, sizes, signs, h_state, c_state, out, cell_out = _borrow_args(
        x, w, bias, sizes, signs, h_state, c_state, out, cell_out)
    for bz in prange(x.shape[0] * w.shape[0]):
        _scan_sample(bz, x, w, bias, d, variant, sizes, signs, inplace,
                     h_state, c_state, out, cell_out, group)


@njit(**_OPTS)
def scan_wavefront(x, w, bias, d, variant, sizes, signs, inplace,
                   h_state, c_state, out, cell_out, group, threads):
    """Parallelism inside the scans, for fewer (sample, direction) pairs than
    threads: 1-D and 2-D scans by tiles (_wavefront_tiles), 3-D scans by
    planes (_wavefront_planes)."""
    x, w, bias, sizes, signs, h_state, c_state, out, cell_out = _borrow_args(
        x, w, bias, sizes, signs, h_state, c_state, out, cell_out)
    if x.shape[1] == 1:
        _wavefront_tiles(x, w, bias, d, variant, sizes, signs, inplace,
                         h_state, c_state, out, cell_out, group, threads)
    else:
        _wavefront_planes(x, w, bias, d, variant, sizes, signs, inplace,
                          h_state, c_state, out, cell_out, group, threads)


@njit(parallel=True, **_OPTS)
def _wavefront_tiles(x, w, bias, d, variant, sizes, signs, inplace,
                     h_state, c_state, out, cell_out, group, threads):
    """Tiles: strip I of `group` rows, steps J * width .. (J + 1) * width - 1
    of its sweep (_scan_steps), so only a strip's first and last steps hold
    partial groups. Strip I's step u needs strip I-1's step u + group - 1,
    which lies in block J + 1 at most: tile (I, J) needs (I, J-1) and
    (I-1, J+1), so the tiles on a diagonal 2I + J = D are independent. One
    parallel region per tile diagonal (~70 on a 256x256 image, instead of ~511
    anti-diagonals of cells), threads share out its tiles.

    States: one row of slots per pair (_roll_pos). A strip's first cell of
    column j - 1 runs group steps before the previous strip's last one of
    column j in a sweep that starts two diagonals later, so, a block spanning
    at least group steps, on a later diagonal. Tiles on one diagonal are two
    blocks apart: they touch disjoint columns.
    """
    z_count, n_gates = w.shape[0], w.shape[2]
    n = n_gates // (3 + d)
    pairs = x.shape[0] * z_count
    s1_all, s2_all = x.shape[2], x.shape[3]
    blocks = _tile_blocks(s2_all, group, threads)
    width = (s2_all + group - 1 + blocks - 1) // blocks
    ring = _ring_rows(1, s1_all, group)
    roll_owner = _roll_buffers(pairs, x, n, inplace, ring)
    roll = borrow(roll_owner)
    roll_h, roll_c = roll[0], roll[1]
    strips_all = (s1_all + group - 1) // group
    work_owner = np.empty((pairs * (blocks // 2 + 1), 3), np.int64)
    work = borrow(work_owner)
    for diagonal in range(2 * (strips_all - 1) + blocks):
        count = 0
        for bz in range(pairs):
            s0, s1, s2 = _extents(sizes, bz // z_count, d)
            strips = (s1 + group - 1) // group
            for strip in range(max(0, (diagonal - blocks) // 2),
                               min(strips - 1, diagonal // 2) + 1):
                block = diagonal - 2 * strip
                if block < blocks and block * width < group + s2 - 1:
                    work[count, 0] = bz
                    work[count, 1] = strip
                    work[count, 2] = block
                    count += 1
        chunks = min(count, threads)
        for chunk in prange(chunks):
            _wavefront_chunk(chunk, chunks, count, work, 0, width, ring, x, w, bias, d,
                             variant, sizes, signs, inplace, h_state, c_state, out, cell_out,
                             group, roll_h, roll_c)
    keep_alive(work_owner)
    keep_alive(roll_owner)


_tile_blocks = njit(**_OPTS)(tile_blocks)  # the dispatcher's rule, compiled


@njit(parallel=True, **_OPTS)
def _wavefront_planes(x, w, bias, d, variant, sizes, signs, inplace,
                      h_state, c_state, out, cell_out, group, threads):
    """One parallel region per plane: threads share out the groups of cells of
    plane t over all (sample, direction) pairs.

    Each plane's groups are listed first, so the static schedule splits equal
    groups evenly; splitting a fixed index range instead would hand all the
    work of the first planes (low i only) to one thread.
    """
    z_count, n_gates = w.shape[0], w.shape[2]
    n = n_gates // (3 + d)
    pairs = x.shape[0] * z_count
    roll_owner = _roll_buffers(pairs, x, n, inplace, 0)
    roll = borrow(roll_owner)
    roll_h, roll_c = roll[0], roll[1]
    planes = 0
    for b in range(x.shape[0]):
        s0, s1, s2 = _extents(sizes, b, d)
        planes = max(planes, s0 + s1 + s2 - 2)
    work_owner = np.empty((pairs * x.shape[1] * ((x.shape[2] + group - 1) // group), 4),
                          np.int64)
    work = borrow(work_owner)
    for t in range(planes):
        count = 0
        for bz in range(pairs):
            s0, s1, s2 = _extents(sizes, bz // z_count, d)
            if t >= s0 + s1 + s2 - 2:
                continue
            a_lo, a_hi = _plane_a_range(t, s0, s1, s2)
            for a in range(a_lo, a_hi + 1):
                i_lo, i_hi = _plane_i_range(t, a, s1, s2)
                for i0 in range(i_lo, i_hi + 1, group):
                    work[count, 0] = bz
                    work[count, 1] = a
                    work[count, 2] = i0
                    work[count, 3] = min(group, i_hi + 1 - i0)
                    count += 1
        chunks = min(count, threads)
        for chunk in prange(chunks):
            _wavefront_chunk(chunk, chunks, count, work, t, 0, 0, x, w, bias, d, variant,
                             sizes, signs, inplace, h_state, c_state, out, cell_out, group,
                             roll_h, roll_c)
    keep_alive(work_owner)
    keep_alive(roll_owner)


@njit(**_OPTS)
def _wavefront_chunk(chunk, chunks, count, work, t, width, ring, x, w, bias, d, variant,
                     sizes, signs, inplace, h_state, c_state, out, cell_out, group,
                     roll_h, roll_c):
    """One thread's share of a wavefront step: a run of consecutive items of
    the work list, tiles (pair, strip, block) when width > 0, else groups
    (pair, a, i0, cells) of plane t. Scratch is allocated per chunk, not per
    item."""
    z_count, n_rows, n_gates = w.shape
    n = n_gates // (3 + d)
    scratch_owner = np.empty(_scratch_size(n_rows, n_gates, d, n, group, x.itemsize), x.dtype)
    rows, c_prev, acc, h_new, c_new = _scratch(borrow(scratch_owner), n_rows, n_gates, d, n,
                                               group)
    for item in range(chunk * count // chunks, (chunk + 1) * count // chunks):
        bz = work[item, 0]
        b, z = bz // z_count, bz % z_count
        if width > 0:
            s0, s1, s2 = _extents(sizes, b, d)
            i_first, u_first = work[item, 1] * group, work[item, 2] * width
            _scan_steps(b, z, i_first, min(i_first + group, s1) - 1, s2, u_first,
                        u_first + width - 1, x, w, bias, d, n, variant, sizes, signs,
                        inplace, h_state, c_state, bz, ring, roll_h, roll_c, out, cell_out,
                        rows, c_prev, acc, h_new, c_new)
        else:
            _group(b, z, t, work[item, 1], work[item, 2], work[item, 3], x.shape[2], 0, x, w,
                   bias, d, n, variant, sizes, signs, inplace, h_state, c_state, bz, 0,
                   roll_h, roll_c, out, cell_out, rows, c_prev, acc, h_new, c_new)
    keep_alive(scratch_owner)


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
    sizes = np.empty((b_count, 2), np.int64)
    for b in range(b_count):
        sizes[b, 0] = x.shape[1]
        sizes[b, 1] = x.shape[2]
    signs = np.ones((1, 2), np.int64)
    g = weights.shape[1]
    empty = np.empty((0, 0, 0, 0, 0), x.dtype)
    # Canonical layout: a leading singleton spatial axis (not padded).
    xc = np.ascontiguousarray(x)
    scan_serial(xc.reshape((b_count, 1) + x.shape[1:]),
                weights.reshape((1,) + weights.shape), bias.reshape((1, g)),
                2, variant, sizes, signs, True,
                h.reshape((b_count, 1) + h.shape[1:]),
                c.reshape((b_count, 1) + c.shape[1:]),
                empty, empty, DEFAULT_GROUP, 1)
