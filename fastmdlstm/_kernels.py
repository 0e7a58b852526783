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

import inspect
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._cells import HALVED, SLSTM, STABLE, VARIANT_CODES
from ._dispatch import GROUP, ring_rows, tile_blocks
from ._lowlevel import (
    VEC_BYTES,
    borrow,
    keep_alive,
    prefetch,
    store_fence,
    vabs,
    vany_gt,
    vbits_add_shl,
    vfma,
    vload,
    vload_part,
    vneg,
    vsplat,
    vstore,
    vstore_part,
    vstore_stream,
    vsum,
    vwhere_gt,
)

# error_model="numpy": a float division must not carry a zero-division branch,
# which would stop the activation loops from vectorising.
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}
# Numba-level inlining for the per-group body, the per-cell update and the
# short row copies and sums: a call passes 7 words per array, and LLVM judged
# the bodies too big to inline (~8% and ~3% on digits; the row helpers, left
# as calls through a pointer, ~5% of the forward on Zen 3).
_INLINE = dict(_OPTS, inline="always")

VARIANTS = VARIANT_CODES  # name -> the code the kernels take
# What the backward found, bits of its per-(sample, direction) flags: h, c (or
# the kept gates) not from a matching forward; a NaN or inf in grad_h, grad_c.
MISMATCH, BAD_GRAD_H, BAD_GRAD_C = 1, 2, 4
DEFAULT_GROUP = GROUP
# Cells whose weight gradients the backward adds to dw in one pass: dw's tiles
# stay in registers over that many cells (8 per pass ran at half the speed).
OUTER_CELLS = 64


# --- activations -------------------------------------------------------------
# libm tanh/exp are scalar calls (~12 ns) that block vectorisation.
#   tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1 (1 - e is exact
#     enough near 0 this way, and nothing overflows);
#   sigma(x) = 1 / (1 + exp(-x)), x clamped to [-40, 40] in float32: no sign
#     select, and exp(40) is finite (float64 keeps e / (1 + e) for x < 0).
#     Below -40 it is 0, not sigma(-40) ~ 4e-18: the clamped function is a
#     constant there, and the backward's derivative s(1 - s) must be 0 (4e-18
#     times an input of 1e30 was 2e10 in grad_w); above 40 it rounds to 1.
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
# The GEMM tiles are inlined: a call passes each array as a struct of fields,
# which cost as much as a tile's work when a tile sums only a few cells.
_ACT_INLINE = dict(_ACT, inline="always")
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
    y = _SIG_CLAMP32 if x > _SIG_CLAMP32 else x
    y = -_SIG_CLAMP32 if y < -_SIG_CLAMP32 else y
    s = _ONE32 / (_ONE32 + _exp32(-y))
    return _F32(0) if x < -_SIG_CLAMP32 else s


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
    return 0.0 if x < -40.0 else (s if x >= 0 else e * s)


# tanh on a vector (the backward's cell gradient): _tanh32's or _tanh64's
# steps on every lane, the exp inlined; same clamps, polynomials and 2**k.
_VTANH32 = (_TANH_CLAMP32, _LOG2E32, _EXP_SHIFT32, _LN2_HI32, _LN2_LO32, _EXP_POLY32,
            _EXP_BIAS32, 23)
_VTANH64 = (20.0, _LOG2E64, _EXP_SHIFT64, _LN2_HI64, _LN2_LO64, _EXP_TAYLOR64,
            _EXP_BIAS64, 52)


def _vtanh_constants(x):
    return _VTANH32 if x.dtype == np.float32 else _VTANH64


@overload(_vtanh_constants)
def _vtanh_constants_overload(x):
    table = _VTANH32 if x.dtype == types.float32 else _VTANH64
    return lambda x: table


@njit(**_INLINE)
def _vtanh(x):
    """The multiply-adds are explicit fmas, the ones LLVM formed under "contract"
    (same results), so that the function can be inlined into the cell gradient,
    which is compiled without that flag: called, it made the caller save and
    reload every live vector around each call."""
    clamp, log2e, shift, ln2_hi, ln2_lo, poly, bias, mantissa = _vtanh_constants(x)
    limit = vsplat(clamp)
    u = vabs(x)
    u = vwhere_gt(u, limit, limit, u)
    y = vneg(u + u)
    t = vfma(y, vsplat(log2e), vsplat(shift))  # k = round(y / ln2) in t's low bits
    k = t - vsplat(shift)
    r = vfma(vneg(k), vsplat(ln2_lo), vfma(vneg(k), vsplat(ln2_hi), y))
    p = vsplat(poly[len(poly) - 1])
    for j in range(len(poly) - 2, -1, -1):
        p = vfma(p, r, vsplat(poly[j]))
    e = p * vbits_add_shl(t, bias, mantissa)
    one = vsplat(poly[0])  # both polynomials start at 1
    th = (one - e) / (one + e)
    return vwhere_gt(one - one, x, vneg(th), th)


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


def lanes_of(arr):
    """Elements of arr's dtype in one SIMD vector. In compiled code a constant:
    VEC_BYTES // arr.itemsize there reads itemsize at run time, and the
    division (and those of the loops stepping by it) cost the backward's cell
    loop ~5 % of its time."""
    return VEC_BYTES // arr.itemsize


def line_of(arr):
    """Elements of arr's dtype in one 64-byte cache line (a constant in
    compiled code, see lanes_of)."""
    return 64 // arr.itemsize


@overload(lanes_of)
def _lanes_of_overload(arr):
    if isinstance(arr, types.Array) and isinstance(arr.dtype, types.Float):
        lanes = VEC_BYTES // (arr.dtype.bitwidth // 8)
        return lambda arr: lanes
    return None


@overload(line_of)
def _line_of_overload(arr):
    if isinstance(arr, types.Array) and isinstance(arr.dtype, types.Float):
        line = 64 // (arr.dtype.bitwidth // 8)
        return lambda arr: line
    return None


def as_float_like(v, like):
    """v in the float type of `like` (compiled code would promote a float32
    expression mixed with a Python float constant to float64)."""
    return type(like)(v)


@overload(as_float_like)
def _as_float_like_overload(v, like):
    if like == types.float32:
        return lambda v, like: np.float32(v)
    if like == types.float64:
        return lambda v, like: np.float64(v)
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
def _preactivation(rows, w, bias, z, acc, m_cnt, init_stride=0):
    """acc[m] = bias[z] + rows[m] @ w[z] for m < m_cnt.

    init_stride: elements from one cell's starting values in bias to the
    next's; 0 (one bias row for every cell), or acc's row length with bias
    = acc, z = 0: acc[m] += rows[m] @ w[0] (the backward's weight gradient).

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
    lanes = lanes_of(rows)
    g = 0
    while g + 2 * lanes <= n_gates:
        m = 0
        while WIDE_TILES and m + 8 <= m_cnt:
            _tile_8x2(rows, m, w, bias, z, g, lanes, acc, init_stride)
            m += 8
        while m + 4 <= m_cnt:
            _tile_4x2(rows, m, w, bias, z, g, lanes, acc, init_stride)
            m += 4
        while m < m_cnt:
            _tile_1x2(rows, m, w, bias, z, g, lanes, acc, init_stride)
            m += 1
        g += 2 * lanes
    while g + lanes <= n_gates:  # one vector of gates left: cells side by side
        m = 0
        while m + 8 <= m_cnt:
            _tile_8x1(rows, m, w, bias, z, g, acc, init_stride)
            m += 8
        while m + 4 <= m_cnt:
            _tile_4x1(rows, m, w, bias, z, g, acc, init_stride)
            m += 4
        while m < m_cnt:
            _tile_1x1(rows, m, w, bias, z, g, acc, init_stride)
            m += 1
        g += lanes
    if g == n_gates:
        return
    # Fewer than `lanes` gates left: a loop along the gate axis, cells inner so
    # that their chains through acc overlap instead of waiting on each other.
    tail = n_gates - g
    flat_bias = bias.reshape(-1)
    for m in range(m_cnt):
        at = z * n_gates + g + m * init_stride
        acc_tail, bias_tail = acc[m, g:], flat_bias[at:at + tail]
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


@njit(**_ACT_INLINE)
def _tile_8x2(rows, m, w, bias, z, g, lanes, acc, init_stride):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    a0, b0 = _load2(bias, z * n_gates + g + m * init_stride, lanes)
    a1, b1 = _load2(bias, z * n_gates + g + (m + 1) * init_stride, lanes)
    a2, b2 = _load2(bias, z * n_gates + g + (m + 2) * init_stride, lanes)
    a3, b3 = _load2(bias, z * n_gates + g + (m + 3) * init_stride, lanes)
    a4, b4 = _load2(bias, z * n_gates + g + (m + 4) * init_stride, lanes)
    a5, b5 = _load2(bias, z * n_gates + g + (m + 5) * init_stride, lanes)
    a6, b6 = _load2(bias, z * n_gates + g + (m + 6) * init_stride, lanes)
    a7, b7 = _load2(bias, z * n_gates + g + (m + 7) * init_stride, lanes)
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
def _load2(src, at, lanes):
    return vload(src, at), vload(src, at + lanes)


@njit(**_ACT)
def _store2(acc, at, lanes, a, b):
    vstore(acc, at, a)
    vstore(acc, at + lanes, b)


@njit(**_ACT_INLINE)
def _tile_4x2(rows, m, w, bias, z, g, lanes, acc, init_stride):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c00, c01 = _load2(bias, z * n_gates + g + m * init_stride, lanes)
    c10, c11 = _load2(bias, z * n_gates + g + (m + 1) * init_stride, lanes)
    c20, c21 = _load2(bias, z * n_gates + g + (m + 2) * init_stride, lanes)
    c30, c31 = _load2(bias, z * n_gates + g + (m + 3) * init_stride, lanes)
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


@njit(**_ACT_INLINE)
def _tile_6x2(rows, m, w, bias, z, g, lanes, acc, init_stride):
    """AVX2's widest: 12 accumulators + 2 weight vectors + 1 splat of the 16
    registers (_accumulate_outer, whose tiles need not divide a group)."""
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c00, c01 = _load2(bias, z * n_gates + g + m * init_stride, lanes)
    c10, c11 = _load2(bias, z * n_gates + g + (m + 1) * init_stride, lanes)
    c20, c21 = _load2(bias, z * n_gates + g + (m + 2) * init_stride, lanes)
    c30, c31 = _load2(bias, z * n_gates + g + (m + 3) * init_stride, lanes)
    c40, c41 = _load2(bias, z * n_gates + g + (m + 4) * init_stride, lanes)
    c50, c51 = _load2(bias, z * n_gates + g + (m + 5) * init_stride, lanes)
    for r in range(n_rows):
        w0 = vload(w, at)
        w1 = vload(w, at + lanes)
        at += n_gates
        c00, c01 = _fma2(rows[m, r], w0, w1, c00, c01)
        c10, c11 = _fma2(rows[m + 1, r], w0, w1, c10, c11)
        c20, c21 = _fma2(rows[m + 2, r], w0, w1, c20, c21)
        c30, c31 = _fma2(rows[m + 3, r], w0, w1, c30, c31)
        c40, c41 = _fma2(rows[m + 4, r], w0, w1, c40, c41)
        c50, c51 = _fma2(rows[m + 5, r], w0, w1, c50, c51)
    out = m * n_gates + g
    _store2(acc, out, lanes, c00, c01)
    _store2(acc, out + n_gates, lanes, c10, c11)
    _store2(acc, out + 2 * n_gates, lanes, c20, c21)
    _store2(acc, out + 3 * n_gates, lanes, c30, c31)
    _store2(acc, out + 4 * n_gates, lanes, c40, c41)
    _store2(acc, out + 5 * n_gates, lanes, c50, c51)


@njit(**_ACT_INLINE)
def _tile_1x2(rows, m, w, bias, z, g, lanes, acc, init_stride):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c0, c1 = _load2(bias, z * n_gates + g + m * init_stride, lanes)
    for r in range(n_rows):
        c0, c1 = _fma2(rows[m, r], vload(w, at), vload(w, at + lanes), c0, c1)
        at += n_gates
    _store2(acc, m * n_gates + g, lanes, c0, c1)


@njit(**_ACT_INLINE)
def _tile_8x1(rows, m, w, bias, z, g, acc, init_stride):
    """8 cells x 1 vector: 8 independent chains hide the FMA latency (one
    chain per cell ran at an eighth of the speed: the backward's da @ W.T
    has a 16-gate tail of input channels)."""
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    at_init = z * n_gates + g + m * init_stride
    c0, c1 = vload(bias, at_init), vload(bias, at_init + init_stride)
    c2, c3 = vload(bias, at_init + 2 * init_stride), vload(bias, at_init + 3 * init_stride)
    c4, c5 = vload(bias, at_init + 4 * init_stride), vload(bias, at_init + 5 * init_stride)
    c6, c7 = vload(bias, at_init + 6 * init_stride), vload(bias, at_init + 7 * init_stride)
    for r in range(n_rows):
        w0 = vload(w, at)
        at += n_gates
        c0 = vfma(vsplat(rows[m, r]), w0, c0)
        c1 = vfma(vsplat(rows[m + 1, r]), w0, c1)
        c2 = vfma(vsplat(rows[m + 2, r]), w0, c2)
        c3 = vfma(vsplat(rows[m + 3, r]), w0, c3)
        c4 = vfma(vsplat(rows[m + 4, r]), w0, c4)
        c5 = vfma(vsplat(rows[m + 5, r]), w0, c5)
        c6 = vfma(vsplat(rows[m + 6, r]), w0, c6)
        c7 = vfma(vsplat(rows[m + 7, r]), w0, c7)
    out = m * n_gates + g
    vstore(acc, out, c0)
    vstore(acc, out + n_gates, c1)
    vstore(acc, out + 2 * n_gates, c2)
    vstore(acc, out + 3 * n_gates, c3)
    vstore(acc, out + 4 * n_gates, c4)
    vstore(acc, out + 5 * n_gates, c5)
    vstore(acc, out + 6 * n_gates, c6)
    vstore(acc, out + 7 * n_gates, c7)


@njit(**_ACT_INLINE)
def _tile_4x1(rows, m, w, bias, z, g, acc, init_stride):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    at_init = z * n_gates + g + m * init_stride
    c0, c1 = vload(bias, at_init), vload(bias, at_init + init_stride)
    c2, c3 = vload(bias, at_init + 2 * init_stride), vload(bias, at_init + 3 * init_stride)
    for r in range(n_rows):
        w0 = vload(w, at)
        at += n_gates
        c0 = vfma(vsplat(rows[m, r]), w0, c0)
        c1 = vfma(vsplat(rows[m + 1, r]), w0, c1)
        c2 = vfma(vsplat(rows[m + 2, r]), w0, c2)
        c3 = vfma(vsplat(rows[m + 3, r]), w0, c3)
    out = m * n_gates + g
    vstore(acc, out, c0)
    vstore(acc, out + n_gates, c1)
    vstore(acc, out + 2 * n_gates, c2)
    vstore(acc, out + 3 * n_gates, c3)


@njit(**_ACT_INLINE)
def _tile_1x1(rows, m, w, bias, z, g, acc, init_stride):
    n_rows, n_gates = w.shape[1], w.shape[2]
    at = z * n_rows * n_gates + g
    c0 = vload(bias, z * n_gates + g + m * init_stride)
    for r in range(n_rows):
        c0 = vfma(vsplat(rows[m, r]), vload(w, at), c0)
        at += n_gates
    vstore(acc, m * n_gates + g, c0)


@njit(**_ACT_INLINE)
def _dot(a, b):
    """a @ b of two 1-D C-contiguous arrays: a vector of partial sums, then its
    lanes added in order (a fixed order, whatever the caller)."""
    lanes = lanes_of(a)
    total = vsplat(as_float_like(0.0, a[0]))
    for r in range(0, a.size, lanes):
        count = min(lanes, a.size - r)
        total = vfma(vload_part(a, r, count), vload_part(b, r, count), total)
    return vsum(total)


@njit(**_INLINE)
def _activate(gates, n):
    """The gates' activations in place: tanh on the candidate block (the first
    n), the logistic function on the rest (output, input, forget gates; the
    stable cell's lambda too). One array per loop: it vectorises cleanly."""
    cand, rest = gates[:n], gates[n:]
    for r in range(n):
        cand[r] = fast_tanh(cand[r])
    for r in range(rest.size):
        rest[r] = fast_sigmoid(rest[r])


@njit(**_INLINE)
def _cell_update(act, c_prev, d, n, variant, h, c):
    """The new state into h, c (N,) from the gates' activations act ((3+d)N,:
    see _activate) and the predecessors' cells c_prev (d, N).

    Every loop runs over r in range(n) on views: an index like act[k*n + r]
    is not provably >= 0, so Numba's negative-index fix-up made LLVM vectorise
    such loops with gathers and scatters.
    """
    cand, out_gate, in_gate = act[:n], act[n:2 * n], act[2 * n:3 * n]
    for r in range(n):
        c[r] = cand[r] * in_gate[r]
    one = as_float_like(1.0, act[0])  # a bare 1 would make float32 sums float64
    if variant == STABLE:  # one forget gate, lam mixes the two predecessors
        forget, lam, up, left = act[3 * n:4 * n], act[4 * n:5 * n], c_prev[0], c_prev[1]
        for r in range(n):
            mix = lam[r]
            c[r] += forget[r] * (mix * up[r] + (one - mix) * left[r])
    else:  # one forget gate per axis; "halved" averages the d terms
        scale = as_float_like(1.0 / d if variant == HALVED else 1.0, one)
        for k in range(d):
            forget, before = act[(3 + k) * n:(4 + k) * n], c_prev[k]
            for r in range(n):
                c[r] += forget[r] * before[r] * scale
    # Saturate instead of overflowing: two forget-gated predecessors can make
    # |c| grow geometrically along a scan; at +-inf, c_up - c_left could give
    # NaN from finite inputs.
    for r in range(n):
        c[r] = saturate(c[r])
    if variant == SLSTM:
        for r in range(n):
            h[r] = fast_tanh(c[r] * out_gate[r])
    else:  # GRAVES, HALVED, STABLE
        for r in range(n):
            h[r] = out_gate[r] * fast_tanh(c[r])


@njit(**_INLINE)
def _copy(src, dst):
    for r in range(dst.size):
        dst[r] = src[r]


@njit(**_INLINE)
def _copy2(src_a, src_b, dst_a, dst_b):
    """dst_a[:] = src_a; dst_b[:] = src_b (one loop: both rows are short)."""
    for r in range(dst_a.size):
        dst_a[r] = src_a[r]
        dst_b[r] = src_b[r]




@njit(**_OPTS)
def _copy_streaming(src, dst):
    """dst[:] = src with non-temporal stores where dst is whole aligned
    vectors (the kept gates: written once, read back by the backward long
    after; a normal store would first read every line); else a plain copy.
    The caller fences (store_fence) before the data are read."""
    lanes = lanes_of(dst)
    if dst.ctypes.data % VEC_BYTES or dst.size % lanes:
        _copy(src, dst)
        return
    for k in range(0, dst.size, lanes):
        vstore_stream(dst, k, vload(src, k))


@njit(**_INLINE)
def _prefetch_lines(v):
    """Prefetch the cache lines of the 1-D view v."""
    line = line_of(v)
    for k in range(0, v.size, line):
        prefetch(v, k)
    prefetch(v, v.size - 1)  # a view need not start on a line


@njit(**_INLINE)
def _add(src, dst):
    for r in range(dst.size):
        dst[r] += src[r]


# --- problems: the arrays one scan works on ----------------------------------------
# A problem bundles the arrays and sizes of a call; the schedules (strips, tiles,
# planes) are written once and run a per-problem group body, chosen at compile
# time by the bundle's type (_by_problem), so each driver is compiled once per
# kind of problem. All arrays use the canonical 3-spatial-axis layout:
#   x (B, S0, S1, S2, C); w (Z, C + d*N, (3+d)*N) C-contiguous; bias (Z, G);
#   sizes (B, d) int64; signs (Z, d) int64; variant (SLSTM or GRAVES).
# Forward: inplace -> h_state, c_state (B, P0, P1, P2, N) are the caller's padded
#   tensors (boundary at index 0 of each real axis), else empty, and h (and c
#   when cell_out has elements) go to out, cell_out (B, S0, S1, S2, Z*N);
#   the gates' activations (_activate) to pre_out (B, S0, S1, S2, Z*G) when it
#   has elements.
# Backward: the reverse scan, run as a scan in the mirrored direction (signs
#   are the forward's negated, so the schedules' "previous" cells are the
#   forward's next ones). h, c: the forward's outputs (B, S0, S1, S2, Z*N), or
#   h_state, c_state in the inplace layout; pre: the forward's pre_out (activations), or
#   empty to recompute them; grad_h, grad_c (grad_c may be
#   empty) like h; dx (B, S0, S1, S2, C), zeroed, accumulated over directions;
#   dw (B*Z, R, G), db (B*Z, G) per-(sample, direction) sums; dh_state,
#   dc_state like h_state: gradients of the boundary states; wt (Z, G, R') is
#   w transposed, recurrent rows first, zero-padded to R' >= R (whole
#   vectors), and zero (Z, R') zeros, for the da @ w.T product; mismatch
#   (B*Z,) collects each pair's flags (MISMATCH, BAD_GRAD_H, BAD_GRAD_C).

Forward = namedtuple("Forward", ("x", "w", "bias", "d", "n", "variant", "sizes", "signs",
                                 "inplace", "h_state", "c_state", "out", "cell_out",
                                 "pre_out"))
Backward = namedtuple("Backward", ("x", "w", "wt", "zero", "bias", "d", "n", "variant",
                                   "sizes", "signs", "inplace", "h_state", "c_state", "h",
                                   "c", "pre", "grad_h", "grad_c", "dx", "dw", "db",
                                   "dh_state", "dc_state", "tol", "mismatch"))


def _by_problem(name, forward_impl, backward_impl):
    """A function running forward_impl on a Forward bundle and backward_impl on
    a Backward one: in compiled code chosen by the bundle's type at compile
    time (a function passed as an argument would defeat Numba's on-disk
    cache), in plain Python (NUMBA_DISABLE_JIT) by isinstance. Numba inlines
    no call with *args, so the wrappers are made with the impls' own
    parameter names; they are inlined (a call passing the bundle cost the
    forward ~40 % on digits, whose groups are small). The overload's
    implementation is the impl's own Python function, not a wrapper calling
    it: Numba copies an inlined function's IR once per inlining, at a cost
    that grows faster than its size, so a wrapper layer around the backward's
    group body cost ~20 s of its first compile."""
    params = ", ".join(inspect.signature(
        getattr(forward_impl, "py_func", forward_impl)).parameters)
    first = params.split(",")[0]
    scope = {"Forward": Forward, "forward_impl": forward_impl,
             "backward_impl": backward_impl}
    exec(f"def {name}({params}):\n"
         f"    impl = forward_impl if isinstance({first}, Forward) else backward_impl\n"
         f"    return impl({params})", scope)
    dispatch = scope[name]

    def typed(*args):
        kind = getattr(args[0], "instance_class", None)
        impl = {Forward: forward_impl, Backward: backward_impl}.get(kind)
        return None if impl is None else getattr(impl, "py_func", impl)

    scope["typed"] = typed
    exec(f"def typed_{name}({params}):\n    return typed({params})", scope)
    overload(dispatch, inline="always")(scope["typed_" + name])
    return dispatch


@njit(**_OPTS)
def _axis_coord(u, extent, sign):
    """Array index of scan coordinate u along an axis scanned with `sign`."""
    return u if sign > 0 else extent - 1 - u


@njit(**_OPTS)
def _cell_coords(p, b, z, t, a, i, split, shift):
    """Array indices (ax, ix, jx) of the scan's cell (a, i, j = t - a - i, plus
    shift from row split on: see _scan_pair) and its j."""
    s0, s1, s2 = _extents(p.sizes, b, p.d)
    g0, g1, g2 = _extents(p.signs, z, p.d)
    j = t - a - i + (shift if i >= split else 0)
    return _axis_coord(a, s0, g0), _axis_coord(i, s1, g1), _axis_coord(j, s2, g2), j


@njit(**_OPTS)
def _step_back(q, a, i, j):
    """(inside, a, i, j) of the cell one step back along canonical axis q, in
    scan coordinates: its predecessor, unless it lies before the scan's start."""
    if q == 0:
        return a > 0, a - 1, i, j
    if q == 1:
        return i > 0, a, i - 1, j
    return j > 0, a, i, j - 1


@njit(**_OPTS)
def _step_on(q, a, i, j):
    """(a, i, j) of the cell one step on along canonical axis q."""
    return a + (1 if q == 0 else 0), i + (1 if q == 1 else 0), j + (1 if q == 2 else 0)


@njit(**_OPTS)
def _pad_offsets(d):
    """Offsets of the caller's padded state tensors: 1 on real axes, 0 on the
    leading dummies."""
    return (1 if d >= 3 else 0), (1 if d >= 2 else 0), 1


@njit(**_OPTS)
def _message_offsets(ring, t, a, i, j, d, n, s1_all, cols, width):
    """Where the backward's cell (a, i, j) on plane t finds its messages in a
    slot of the rolling buffers (rows of `cols` places of `width` values, see
    _roll_pos): for each k < d the flat offset of part k of the cell one step
    back along canonical axis 3 - d + k (this scan's previous cell, which
    sent it part k), or -1 where that lies before the scan's start; -1 for
    k >= d."""
    off0 = off1 = off2 = -1
    for k in range(d):
        present, qa, qi, qj = _step_back(3 - d + k, a, i, j)
        if present:
            u, v = _roll_pos(ring, t - 1, qa, qi, qj, s1_all)
            at = (u * cols + v) * width + k * n
            if k == 0:
                off0 = at
            elif k == 1:
                off1 = at
            else:
                off2 = at
    return off0, off1, off2


# --- the forward's group body ------------------------------------------------------


@njit(**_INLINE)
def _forward_group(p, sc, roll_h, roll_c, slot, ring, b, z, t, a, i0, m_cnt, split, shift, fill):
    """Cells (a, i, t - a - i) for i in [i0, i0 + m_cnt) of sample b, direction
    z (j shifted by `shift` from row `split` on: the rows from split on belong
    to the next strip, which trails behind; see _scan_pair). fill: see
    _backward_group; the forward defers nothing and returns 0.

    inplace: h_state/c_state are the caller's padded tensors; otherwise
    roll_h[slot]/roll_c[slot] hold the recent states of this (b, z), placed by
    _roll_pos(ring, ...), and h goes to out (and c to cell_out when it has
    elements).
    """
    rows, c_prev, acc, h_new, c_new = sc
    x, d, n = p.x, p.d, p.n
    n_in = x.shape[4]
    s1_all = x.shape[2]
    first_real = 3 - d
    o0, o1, o2 = _pad_offsets(d)
    # Views, never offset indices (see _cell_update); they are borrowed, so free.
    for m in range(m_cnt):
        i = i0 + m
        ax, ix, jx, j = _cell_coords(p, b, z, t, a, i, split, shift)
        row = rows[m]
        _copy(x[b, ax, ix, jx], row[:n_in])
        for k in range(d):
            q = first_real + k
            h_dst = row[n_in + k * n:n_in + (k + 1) * n]
            if p.inplace:  # "tl" only: array index = scan coordinate
                pa = a + o0 - (1 if q == 0 else 0)
                pi = i + o1 - (1 if q == 1 else 0)
                pj = j + o2 - (1 if q == 2 else 0)
                _copy2(p.h_state[b, pa, pi, pj], p.c_state[b, pa, pi, pj], h_dst, c_prev[m, k])
                continue
            present, pa, pi, pj = _step_back(q, a, i, j)
            if present:
                u, v = _roll_pos(ring, t - 1, pa, pi, pj, s1_all)
                _copy2(roll_h[slot, u, v], roll_c[slot, u, v], h_dst, c_prev[m, k])
            else:
                h_dst[:] = 0
                c_prev[m, k, :] = 0
    _preactivation(rows, p.w, p.bias, z, acc, m_cnt)
    ch, n_gates = z * n, p.w.shape[2]
    for m in range(m_cnt):
        i = i0 + m
        ax, ix, jx, j = _cell_coords(p, b, z, t, a, i, split, shift)
        _activate(acc[m], n)
        if p.pre_out.size:  # kept for a backward
            _copy_streaming(acc[m], p.pre_out[b, ax, ix, jx, z * n_gates:(z + 1) * n_gates])
        _cell_update(acc[m], c_prev[m], d, n, p.variant, h_new, c_new)
        if p.inplace:
            pa, pi, pj = a + o0, i + o1, j + o2
            _copy2(h_new, c_new, p.h_state[b, pa, pi, pj], p.c_state[b, pa, pi, pj])
            continue
        u, v = _roll_pos(ring, t, a, i, j, s1_all)
        _copy2(h_new, c_new, roll_h[slot, u, v], roll_c[slot, u, v])
        _copy(h_new, p.out[b, ax, ix, jx, ch:ch + n])
        if p.cell_out.size:
            _copy(c_new, p.cell_out[b, ax, ix, jx, ch:ch + n])
    if p.pre_out.size:
        store_fence()
    return 0


# --- the backward's group body -----------------------------------------------------
# Cell p of the forward, with pre-activation a = row_p @ W + b (row_p = x_p and
# the predecessors' h), gates g = tanh(a_g), o, i, f_k = sigma(a_.), and
#   c = sat(g i + sum_k f_k c_k),  h = tanh(c o) (slstm) or o tanh(c) (graves).
# Its total gradients dh, dc are grad_h, grad_c plus what its forward successors
# sent back. Then (sat' = 0 where |c| is the largest float, else 1)
#   slstm:  dc += dh (1 - h^2) o,  do = dh (1 - h^2) c
#   graves: dc += dh o (1 - tanh(c)^2),  do = dh tanh(c);   dc *= sat'
#   da_g = dc i (1 - g^2), da_o = do o (1 - o), da_i = dc g i (1 - i),
#   da_fk = dc c_k f_k (1 - f_k);   to predecessor k: dc f_k and (da @ W.T)_k,
#   dx_p = (da @ W.T)[:C],  dW += row_p^T da,  db += da.
# Messages to the predecessors travel through the same row of slots as the
# forward's states (the reverse scan has the same dependency shape); a slot
# holds a cell's d messages (d*N values each for h and c).


@njit(**_INLINE)
def _backward_group(p, sc, roll_h, roll_c, slot, ring, b, z, t, a, i0, m_cnt, split, shift, fill):
    """The backward of cells (a, i, t - a - i), i in [i0, i0 + m_cnt), in the
    reverse scan's coordinates (see Backward).

    The weight gradient is deferred: the rows and da of the scan's last
    `fill` cells wait in the scratch (OUTER_CELLS at most), this group's go
    after them, and one pass over dw adds them all once the next group might
    not fit (_flush_outer). Returns the new fill."""
    rows_all, c_prev, acc, da_all, drows = sc
    rows, da = rows_all[fill:], da_all[fill:]
    x, d, n = p.x, p.d, p.n
    n_in = x.shape[4]
    s1_all = x.shape[2]
    first_real = 3 - d
    o0, o1, o2 = _pad_offsets(d)
    s0, s1, s2 = _extents(p.sizes, b, d)
    g0, g1, g2 = _extents(p.signs, z, d)
    bz = b * p.w.shape[0] + z
    ch = z * n
    n_gates = p.w.shape[2]
    if not p.inplace:
        # The forward predecessors' h and c into L1 for the gather: the cell
        # loop asked for them a step ago (a strip's last row's not at all), but
        # the products since streamed W.T, dW and the scratch through L1. The
        # whole group's at once, before the copies, so that the misses overlap
        # (Zen 4: standard's backward ~5 % faster, digits' the same).
        for m in range(m_cnt):
            i = i0 + m
            j = _cell_coords(p, b, z, t, a, i, split, shift)[3]
            for k in range(d):
                pa, pi, pj = _step_on(first_real + k, a, i, j)
                if pa < s0 and pi < s1 and pj < s2:
                    fa, fi, fj = _axis_coord(pa, s0, g0), _axis_coord(pi, s1, g1), _axis_coord(
                        pj, s2, g2)
                    _prefetch_lines(p.h[b, fa, fi, fj, ch:ch + n])
                    _prefetch_lines(p.c[b, fa, fi, fj, ch:ch + n])
    # Gather: the forward's row (x and the forward predecessors' h, i.e. the
    # next cells of this scan) and the predecessors' c.
    for m in range(m_cnt):
        i = i0 + m
        ax, ix, jx, j = _cell_coords(p, b, z, t, a, i, split, shift)
        row = rows[m]
        _copy(x[b, ax, ix, jx], row[:n_in])
        for k in range(d):
            q = first_real + k
            h_dst = row[n_in + k * n:n_in + (k + 1) * n]
            # The forward predecessor: one step further along axis q here.
            pa, pi, pj = _step_on(q, a, i, j)
            fa, fi, fj = _axis_coord(pa, s0, g0), _axis_coord(pi, s1, g1), _axis_coord(
                pj, s2, g2)
            if p.inplace:  # index -1 + 1 = 0: the boundary
                _copy2(p.h_state[b, fa + o0, fi + o1, fj + o2],
                       p.c_state[b, fa + o0, fi + o1, fj + o2], h_dst, c_prev[m, k])
            elif pa < s0 and pi < s1 and pj < s2:
                _copy2(p.h[b, fa, fi, fj, ch:ch + n], p.c[b, fa, fi, fj, ch:ch + n], h_dst,
                       c_prev[m, k])
            else:
                h_dst[:] = 0
                c_prev[m, k, :] = 0
    if p.pre.size == 0:
        _preactivation(rows, p.w, p.bias, z, acc, m_cnt)
    elif a == s0 - 1 and i0 + m_cnt >= s1:
        # Given gates, nothing here multiplies x by W, so a changed x, W or
        # bias (an optimiser step in place, a reused x buffer) would go
        # unnoticed: recompute the gates of the forward's first cell (the
        # last of this scan), whose row is x and zeros, and compare them.
        for m in range(m_cnt):
            ax, ix, jx, j = _cell_coords(p, b, z, t, a, i0 + m, split, shift)
            if i0 + m == s1 - 1 and j == s2 - 1:
                _preactivation(rows[m:m + 1], p.w, p.bias, z, acc, 1)
                _activate(acc[0], n)
                if _differs(acc[0], p.pre[b, ax, ix, jx, z * n_gates:(z + 1) * n_gates], p.tol):
                    p.mismatch[bz] |= MISMATCH
    for m in range(m_cnt):
        i = i0 + m
        ax, ix, jx, j = _cell_coords(p, b, z, t, a, i, split, shift)
        # The big arrays are read a few cells per row at a time, rows far
        # apart: more streams than the hardware prefetcher follows. Ask for
        # what the cell two steps on needs (gates, states, gradients, input and
        # its gradient), a cell at a time between the cell gradients: a whole
        # group's ~270 lines asked for at once stalled on the misses in flight.
        if not p.inplace:
            px, pix, pjx, pj = _cell_coords(p, b, z, t + 2, a, i, split, shift)
            if pj < s2:
                if p.pre.size:
                    _prefetch_lines(p.pre[b, px, pix, pjx, z * n_gates:(z + 1) * n_gates])
                _prefetch_lines(p.h[b, px, pix, pjx, ch:ch + n])
                _prefetch_lines(p.c[b, px, pix, pjx, ch:ch + n])
                _prefetch_lines(p.grad_h[b, px, pix, pjx, ch:ch + n])
                _prefetch_lines(x[b, px, pix, pjx])
                _prefetch_lines(p.dx[b, px, pix, pjx])
        if p.pre.size:  # kept by the forward
            act = p.pre[b, ax, ix, jx, z * n_gates:(z + 1) * n_gates]
        else:
            act = acc[m]
            _activate(act, n)
        if p.inplace:
            h_cell = p.h_state[b, ax + o0, ix + o1, jx + o2]
            c_cell = p.c_state[b, ax + o0, ix + o1, jx + o2]
        else:
            h_cell = p.h[b, ax, ix, jx, ch:ch + n]
            c_cell = p.c[b, ax, ix, jx, ch:ch + n]
        grad_h = p.grad_h[b, ax, ix, jx, ch:ch + n]  # in place: one direction, ch = 0
        if p.grad_c.size == 0:
            grad_c = p.zero[z, :n]
        else:
            grad_c = p.grad_c[b, ax, ix, jx, ch:ch + n]
        # The messages from this scan's previous cells are read as the cell
        # gradient sums them, and its c messages go straight to its own slot:
        # no cell of a group reads a slot a cell before it wrote (a later
        # cell's column is smaller, in 2-D also across the strips a group
        # spans, see _scan_pair).
        u, v = _roll_pos(ring, t, a, i, j, s1_all)
        at = _message_offsets(ring, t, a, i, j, d, n, s1_all, roll_c.shape[2], roll_c.shape[3])
        flags = _cell_grad(act, c_prev[m], h_cell, c_cell, grad_h, grad_c, roll_h[slot],
                           roll_c[slot], at, d, n, p.variant, p.tol, da[m], roll_c[slot, u, v])
        if flags:
            p.mismatch[bz] |= flags
    # da @ W.T: the same micro-kernel, W.T as the weights and zero bias; wt's
    # columns are W's rows with the d*N recurrent ones first (whole vectors
    # for the GEMM's tiles; the C input channels make the ragged tail), or
    # those alone when the inputs would part-fill a vector of their own:
    # then dx is a dot product per channel (run_backward).
    _preactivation(da, p.wt, p.zero, z, drows, m_cnt)
    inputs_by_dot = p.wt.shape[2] < d * n + n_in
    for m in range(m_cnt):
        i = i0 + m
        ax, ix, jx, j = _cell_coords(p, b, z, t, a, i, split, shift)
        dx_cell = p.dx[b, ax, ix, jx]
        if inputs_by_dot:
            for k in range(n_in):
                dx_cell[k] += _dot(da[m], p.w[z, k])
        else:
            _add(drows[m, d * n:], dx_cell)
        u, v = _roll_pos(ring, t, a, i, j, s1_all)
        msg_h, msg_c = roll_h[slot, u, v], roll_c[slot, u, v]
        _copy(drows[m, :d * n], msg_h)  # the c messages are there (_cell_grad)
        if not p.inplace:
            continue
        for k in range(d):
            part_c = msg_c[k * n:(k + 1) * n]
            q = first_real + k
            pa, pi, pj = _step_on(q, a, i, j)
            if pa < s0 and pi < s1 and pj < s2:
                continue
            # The forward predecessor is a boundary state: its gradient.
            fa, fi, fj = _axis_coord(pa, s0, g0), _axis_coord(pi, s1, g1), _axis_coord(
                pj, s2, g2)
            _copy2(msg_h[k * n:(k + 1) * n], part_c,
                   p.dh_state[b, fa + o0, fi + o1, fj + o2],
                   p.dc_state[b, fa + o0, fi + o1, fj + o2])
    fill += m_cnt
    if fill + acc.shape[0] > rows_all.shape[0]:  # the next group might not fit
        _flush_outer(p, sc, bz, fill)
        fill = 0
    return fill


@njit(**_INLINE)
def _differs(values, kept, tol):
    """Whether some value differs from the kept one by more than
    tol * (1 + |kept|), or is NaN where that is not."""
    for k in range(values.shape[0]):
        if not abs(values[k] - kept[k]) <= tol * (1 + abs(kept[k])):
            return True
    return False


@njit(**_INLINE)
def _cell_grad(act, c_prev, h, c, grad_h, grad_c, msgs_h, msgs_c, at, d, n, variant, tol, da,
               msg_c):
    """da ((3+d)N,) of one cell from its gates' activations act (see
    _activate), the predecessors' cells c_prev (d, N), its stored h, c and
    total gradients dh, dc: the given grad_h, grad_c plus, in k order, the
    messages msgs_h.flat[at[k]:at[k] + N] and likewise of msgs_c (none where
    at[k] < 0; see _message_offsets). Writes msg_c[kN:(k+1)N], the c message
    to predecessor k (dc * f_k). Recomputes c and h on the way and returns
    flags: MISMATCH where they differ from the stored ones by more than
    tol * (1 + |value|) (h, c not from a matching forward), BAD_GRAD_H,
    BAD_GRAD_C where the given grad_h, grad_c hold a NaN or inf (checked here,
    where they are read anyway: np.isfinite over them cost ~2 % of the
    digits backward).

    One vector of units at a time, all steps on it in registers (the last
    vector's lanes past N are zeros, neither read nor written): the
    loop-per-step form spent most of its time entering and leaving its ~10
    short loops (N = 32 took as long as N = 64). One function, no helper
    taking the arrays: each call or copy of an array would count references.
    """
    lanes = lanes_of(c)
    one = vsplat(as_float_like(1.0, c[0]))
    zero = one - one
    big = vsplat(saturate(as_float_like(np.inf, c[0])))  # the largest finite float
    limit = vsplat(as_float_like(tol, c[0]))
    scale = vsplat(as_float_like(1.0 / d if variant == HALVED else 1.0, c[0]))
    bad = False
    # 0 * the given gradients, summed: NaN in a lane iff one was NaN or inf
    # (one fma a vector; the compares wait for the end).
    nan_h = nan_c = zero
    for r in range(0, n, lanes):
        count = min(lanes, n - r)
        g = vload_part(act, r, count)
        o = vload_part(act, n + r, count)
        i = vload_part(act, 2 * n + r, count)
        cell = g * i  # the forward's c, as _cell_update computes it
        # Defined on every path: a variable set in one branch only would make
        # Numba's inliner (the group body is inlined) see an undefined value.
        forget = mix = up = left = mixed = zero
        if variant == STABLE:
            forget, mix = vload_part(act, 3 * n + r, count), vload_part(act, 4 * n + r, count)
            up, left = vload_part(c_prev, r, count), vload_part(c_prev, n + r, count)
            mixed = mix * up + (one - mix) * left
            cell = cell + forget * mixed
        else:
            for k in range(d):
                before = vload_part(c_prev, k * n + r, count)
                cell = cell + vload_part(act, (3 + k) * n + r, count) * before * scale
        cr, h_stored = vload_part(c, r, count), vload_part(h, r, count)
        dh_r, dc_r = vload_part(grad_h, r, count), vload_part(grad_c, r, count)
        nan_h, nan_c = vfma(dh_r, zero, nan_h), vfma(dc_r, zero, nan_c)
        for k in range(d):
            if at[k] >= 0:
                dh_r = dh_r + vload_part(msgs_h, at[k] + r, count)
                dc_r = dc_r + vload_part(msgs_c, at[k] + r, count)
        cell = vwhere_gt(cell, big, big, vwhere_gt(vneg(big), cell, vneg(big), cell))
        bad_c = vany_gt(vabs(cell - cr), limit * (one + vabs(cr)))
        if variant == SLSTM:
            hr = _vtanh(cr * o)
            du = dh_r * (one - hr * hr)
            dc_r = dc_r + du * o
            da_o = du * cr * o * (one - o)
        else:  # GRAVES, HALVED, STABLE
            tc = _vtanh(cr)
            hr = o * tc
            dc_r = dc_r + dh_r * o * (one - tc * tc)
            da_o = dh_r * tc * o * (one - o)
        bad_h = vany_gt(vabs(hr - h_stored), limit * (one + vabs(h_stored)))
        dc_r = vwhere_gt(big, vabs(cr), dc_r, zero)  # saturated: the clip's derivative is 0
        vstore_part(da, r, dc_r * i * (one - g * g), count)
        vstore_part(da, n + r, da_o, count)
        vstore_part(da, 2 * n + r, dc_r * g * i * (one - i), count)
        if variant == STABLE:
            d_mix = dc_r * forget  # gradient of lam*up + (1-lam)*left
            vstore_part(da, 3 * n + r, dc_r * mixed * forget * (one - forget), count)
            vstore_part(da, 4 * n + r, d_mix * (up - left) * mix * (one - mix), count)
            vstore_part(msg_c, r, d_mix * mix, count)
            vstore_part(msg_c, n + r, d_mix * (one - mix), count)
        else:
            for k in range(d):
                forget = vload_part(act, (3 + k) * n + r, count)
                before = vload_part(c_prev, k * n + r, count)
                vstore_part(da, (3 + k) * n + r, dc_r * scale * before * forget * (one - forget),
                            count)
                vstore_part(msg_c, k * n + r, dc_r * scale * forget, count)
        bad = bad | bad_c | bad_h
    # A NaN lane fails one + x > 0 (false for NaN): 1 there, 0 elsewhere.
    bad_grad_h = vany_gt(vwhere_gt(one + nan_h, zero, zero, one), zero)
    bad_grad_c = vany_gt(vwhere_gt(one + nan_c, zero, zero, one), zero)
    return ((MISMATCH if bad else 0) | (BAD_GRAD_H if bad_grad_h else 0)
            | (BAD_GRAD_C if bad_grad_c else 0))


@njit(**_ACT)
def _accumulate_outer(rows, da, m_cnt, dw, db):
    """dw += rows[:m_cnt].T @ da[:m_cnt] and db += the sum of da's rows.

    _preactivation's tiles with the roles turned: dw's rows are the tiles'
    cells, the given cells (up to OUTER_CELLS, deferred by _backward_group)
    their rows and dw itself the starting values, so a tile of dw stays in
    registers over all those cells (the earlier kernel kept da in registers
    and loaded and stored dw once per 4 or 8 cells: ~45 % of the FMA peak on
    AVX2). dw is swept row by row (the
    tiles' column order ran 25 % slower: strided streams). Each element of
    dw is the same chain as before, one fma per cell in cell order, whatever
    the tiles or the thread count.
    """
    n_rows, n_gates = dw.shape
    lanes = lanes_of(dw)
    wide_end = n_gates - n_gates % (2 * lanes)
    vec_end = n_gates - n_gates % lanes
    by_row = rows.T  # the tiles' rows[m, r]: row m of dw, cell r
    w = da[:m_cnt].reshape((1, m_cnt, n_gates))
    m = 0
    while m < n_rows:
        tile = 8 if WIDE_TILES and m + 8 <= n_rows else (4 if m + 4 <= n_rows else 1)
        if not WIDE_TILES and m + 6 <= n_rows:
            tile = 6
        for g in range(0, wide_end, 2 * lanes):
            if tile == 8:
                _tile_8x2(by_row, m, w, dw, 0, g, lanes, dw, n_gates)
            elif tile == 6:
                _tile_6x2(by_row, m, w, dw, 0, g, lanes, dw, n_gates)
            elif tile == 4:
                _tile_4x2(by_row, m, w, dw, 0, g, lanes, dw, n_gates)
            else:
                _tile_1x2(by_row, m, w, dw, 0, g, lanes, dw, n_gates)
        for g in range(wide_end, vec_end, lanes):
            if tile == 8:
                _tile_8x1(by_row, m, w, dw, 0, g, dw, n_gates)
            elif tile == 1:
                _tile_1x1(by_row, m, w, dw, 0, g, dw, n_gates)
            else:  # 4, or 6 as 4 + 1 + 1
                _tile_4x1(by_row, m, w, dw, 0, g, dw, n_gates)
                for k in range(m + 4, m + tile):
                    _tile_1x1(by_row, k, w, dw, 0, g, dw, n_gates)
        m += tile
    for r in range(n_rows):  # fewer than `lanes` gates left
        for g in range(vec_end, n_gates):
            acc = dw[r, g]
            for k in range(m_cnt):
                acc += rows[k, r] * da[k, g]
            dw[r, g] = acc
    for k in range(m_cnt):
        cell = da[k]
        for g in range(n_gates):
            db[g] += cell[g]


@njit(**_OPTS)
def _flush_outer(p, sc, bz, fill):
    """Adds the deferred weight gradients of the last `fill` cells of pair bz
    (see _backward_group)."""
    rows_all, _, _, da_all, _ = sc
    _accumulate_outer(rows_all, da_all, fill, p.dw[bz], p.db[bz])


@njit(**_OPTS)
def _forward_flush(p, sc, bz, fill):
    pass


_finish_pair = _by_problem("_finish_pair", _forward_flush, _flush_outer)


# --- geometry of scans -------------------------------------------------------------


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
    if ring == 1:  # 1-D, 2-D: no division (the backward asks ~5 times a cell;
        return 0, j  # the divisions took ~5 % of a digits cell, measured)
    return (a * s1_all + i) % ring, j


_ring_rows = njit(**_OPTS)(ring_rows)  # the API's memory estimate uses it too


# --- per-problem storage -----------------------------------------------------------


@njit(**_OPTS)
def _forward_slot_width(p):
    return p.n


@njit(**_OPTS)
def _backward_slot_width(p):
    return p.d * p.n  # one message per predecessor


_slot_width = _by_problem("_slot_width", _forward_slot_width, _backward_slot_width)


@njit(**_OPTS)
def _pair_buffers(p, pairs, ring):
    """h ([0]) and c ([1]) slots of the recent cells of each (sample,
    direction), (2, pairs, P, Q, width) in _roll_pos's layout; empty for the
    forward's inplace layout, whose states live in the caller's tensors."""
    x = p.x
    if isinstance_forward(p) and p.inplace:
        return np.empty((2, pairs, 0, 0, p.n), x.dtype)
    width = _slot_width(p)
    if ring == 0:
        return np.empty((2, pairs, 2, x.shape[1] * x.shape[2], width), x.dtype)
    return np.empty((2, pairs, ring, x.shape[3], width), x.dtype)


def isinstance_forward(p):
    return isinstance(p, Forward)


@overload(isinstance_forward)
def _isinstance_forward(p):
    is_forward = getattr(p, "instance_class", None) is Forward
    return lambda p: is_forward


# Element counts of the scratch arrays of one thread, in _carve's order.
@njit(**_OPTS)
def _forward_scratch_parts(p, group):
    n_rows, n_gates, d, n = p.w.shape[1], p.w.shape[2], p.d, p.n
    # acc, rows, c_prev, h_new, c_new
    return (group * n_gates, group * n_rows, group * d * n, n, n, 0, 0)


@njit(**_OPTS)
def _deferred_cells(group):
    """Cells whose rows and da the backward's scratch holds for one weight-
    gradient pass (_backward_group): OUTER_CELLS, or a group if larger."""
    return max(group, OUTER_CELLS)


@njit(**_OPTS)
def _backward_scratch_parts(p, group):
    n_rows, n_gates, d, n = p.w.shape[1], p.w.shape[2], p.d, p.n
    # acc, rows, c_prev, da, drows; rows and da hold the deferred cells
    cells = _deferred_cells(group)
    return (group * n_gates, cells * n_rows, group * d * n, cells * n_gates,
            group * p.wt.shape[2], 0, 0)


_scratch_parts = _by_problem("_scratch_parts", _forward_scratch_parts,
                             _backward_scratch_parts)


@njit(**_OPTS)
def _scratch_len(p, group):
    """Elements of one scratch buffer: each part rounded up to a cache line."""
    line = 64 // p.x.itemsize
    total = line  # for the alignment of the first part
    for part in _scratch_parts(p, group):
        total += (part + line - 1) // line * line
    return total


@njit(**_OPTS)
def _carve_flat(p, buf, group):
    """The parts of buf as flat arrays, each starting on a cache line (the
    GEMM's vectors then never straddle one)."""
    line = 64 // buf.itemsize
    at = (-buf.ctypes.data % 64) // buf.itemsize
    p0, p1, p2, p3, p4, p5, p6 = _scratch_parts(p, group)
    a0, a1 = at, at + (p0 + line - 1) // line * line
    a2 = a1 + (p1 + line - 1) // line * line
    a3 = a2 + (p2 + line - 1) // line * line
    a4 = a3 + (p3 + line - 1) // line * line
    a5 = a4 + (p4 + line - 1) // line * line
    a6 = a5 + (p5 + line - 1) // line * line
    return (buf[a0:a0 + p0], buf[a1:a1 + p1], buf[a2:a2 + p2], buf[a3:a3 + p3],
            buf[a4:a4 + p4], buf[a5:a5 + p5], buf[a6:a6 + p6])


@njit(**_OPTS)
def _forward_carve(p, buf, group):
    n_rows, n_gates, d, n = p.w.shape[1], p.w.shape[2], p.d, p.n
    acc, rows, c_prev, h_new, c_new, _, _ = _carve_flat(p, buf, group)
    return (rows.reshape((group, n_rows)), c_prev.reshape((group, d, n)),
            acc.reshape((group, n_gates)), h_new, c_new)


@njit(**_OPTS)
def _backward_carve(p, buf, group):
    n_rows, n_gates, d, n = p.w.shape[1], p.w.shape[2], p.d, p.n
    acc, rows, c_prev, da, drows, _, _ = _carve_flat(p, buf, group)
    cells = _deferred_cells(group)
    return (rows.reshape((cells, n_rows)), c_prev.reshape((group, d, n)),
            acc.reshape((group, n_gates)), da.reshape((cells, n_gates)),
            drows.reshape((group, p.wt.shape[2])))


_carve = _by_problem("_carve", _forward_carve, _backward_carve)
_run_group = _by_problem("_run_group", _forward_group, _backward_group)


@njit(**_OPTS)
def _forward_borrowed(p):
    return Forward(borrow(p.x), borrow(p.w), borrow(p.bias), p.d, p.n, p.variant,
                   borrow(p.sizes), borrow(p.signs), p.inplace, borrow(p.h_state),
                   borrow(p.c_state), borrow(p.out), borrow(p.cell_out), borrow(p.pre_out))


@njit(**_OPTS)
def _backward_borrowed(p):
    return Backward(borrow(p.x), borrow(p.w), borrow(p.wt), borrow(p.zero), borrow(p.bias),
                    p.d, p.n, p.variant, borrow(p.sizes), borrow(p.signs), p.inplace,
                    borrow(p.h_state), borrow(p.c_state), borrow(p.h), borrow(p.c),
                    borrow(p.pre), borrow(p.grad_h), borrow(p.grad_c), borrow(p.dx), borrow(p.dw),
                    borrow(p.db), borrow(p.dh_state), borrow(p.dc_state), p.tol,
                    borrow(p.mismatch))


# Borrowed views of a problem's arrays (see _lowlevel), which the driver's
# caller keeps alive.
_borrowed = _by_problem("_borrowed", _forward_borrowed, _backward_borrowed)


@njit(**_OPTS)
def _pairs_per_unit(p):
    """(sample, direction) pairs one thread takes at a time: one for the
    forward; a sample's directions for the backward, which adds them all into
    the sample's dx (in direction order: no two threads write one dx)."""
    return 1 if isinstance_forward(p) else p.w.shape[0]


# --- schedules ---------------------------------------------------------------------


@njit(**_OPTS)
def _scan_unit(p, unit, group):
    """The scans of one unit of work (_pairs_per_unit pairs) in strip order,
    with one set of slots and scratch."""
    per = _pairs_per_unit(p)
    ring = _ring_rows(p.x.shape[1], p.x.shape[2], group)
    roll_owner = _pair_buffers(p, 1, ring)
    scratch_owner = np.empty(_scratch_len(p, group), p.x.dtype)
    roll = borrow(roll_owner)
    sc = _carve(p, borrow(scratch_owner), group)
    for bz in range(unit * per, (unit + 1) * per):
        _scan_pair(p, bz, group, ring, roll[0], roll[1], sc)
    keep_alive(roll_owner)
    keep_alive(scratch_owner)


@njit(**_OPTS)
def _scan_pair(p, bz, group, ring, roll_h, roll_c, sc):
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
    z_count = p.w.shape[0]
    b, z = bz // z_count, bz % z_count
    s0, s1, s2 = _extents(p.sizes, b, p.d)
    lag = max(s2, group) if s0 == 1 else s2 + group  # >= group + s2 - 1: no overlap
    strips = (s1 + group - 1) // group
    steps = (strips - 1) * lag + (s1 - (strips - 1) * group) + s2 - 1
    fill = 0
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
                fill = _run_group(p, sc, roll_h, roll_c, 0, ring, b, z, t, a, i_lo,
                                  i_hi + 1 - i_lo, first, shift, fill)
    _finish_pair(p, sc, bz, fill)


@njit(**_OPTS)
def _scan_steps(p, sc, roll_h, roll_c, slot, ring, b, z, i_first, i_last, s2, u_first,
                u_last):
    """Steps u_first..u_last of the strip of rows i_first..i_last of a 2-D
    scan s2 columns wide: step u is the anti-diagonal (i - i_first) + j = u."""
    for u in range(u_first, min(u_last, i_last - i_first + s2 - 1) + 1):
        i0 = max(i_first, i_first + u - (s2 - 1))
        _run_group(p, sc, roll_h, roll_c, slot, ring, b, z, i_first + u, 0, i0,
                   min(i_last, i_first + u) + 1 - i0, i_last + 1, 0, 0)


# --- drivers -----------------------------------------------------------------------
# Each takes a problem, `group` (cells per weight pass) and `threads` (the numba
# thread count: the wavefront driver splits each plane into that many chunks;
# numba.get_num_threads() inside a kernel would stop it being cached).


@njit(**_OPTS)
def scan_serial(p, group, threads):
    """One thread: samples and directions one after the other."""
    p = _borrowed(p)
    for unit in range(p.x.shape[0] * p.w.shape[0] // _pairs_per_unit(p)):
        _scan_unit(p, unit, group)


@njit(**_OPTS)
def scan_batch_parallel(p, group, threads):
    """One parallel region: threads share out the units of work."""
    _batch_units(_borrowed(p), group)


@njit(parallel=True, **_OPTS)
def _batch_units(p, group):
    # A parallel region takes the borrowed bundle as an argument: Numba's
    # parallel lowering cannot type a namedtuple built in the same function.
    for unit in prange(p.x.shape[0] * p.w.shape[0] // _pairs_per_unit(p)):
        _scan_unit(p, unit, group)


@njit(**_OPTS)
def scan_wavefront(p, group, threads):
    """Parallelism inside the scans, for fewer (sample, direction) pairs than
    threads: 1-D and 2-D scans by tiles (_wavefront_tiles), 3-D scans by
    planes (_wavefront_planes). Forward only: its groups differ from the
    strip order's, which would change the backward's sums."""
    p = _borrowed(p)
    if p.x.shape[1] == 1:
        _wavefront_tiles(p, group, threads)
    else:
        _wavefront_planes(p, group, threads)


@njit(parallel=True, **_OPTS)
def _wavefront_tiles(p, group, threads):
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
    z_count = p.w.shape[0]
    pairs = p.x.shape[0] * z_count
    s1_all, s2_all = p.x.shape[2], p.x.shape[3]
    blocks = _tile_blocks(s2_all, group, threads)
    width = (s2_all + group - 1 + blocks - 1) // blocks
    ring = _ring_rows(1, s1_all, group)
    roll_owner = _pair_buffers(p, pairs, ring)
    roll = borrow(roll_owner)
    strips_all = (s1_all + group - 1) // group
    work_owner = np.empty((pairs * (blocks // 2 + 1), 3), np.int64)
    work = borrow(work_owner)
    for diagonal in range(2 * (strips_all - 1) + blocks):
        count = 0
        for bz in range(pairs):
            s0, s1, s2 = _extents(p.sizes, bz // z_count, p.d)
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
            _wavefront_chunk(p, chunk, chunks, count, work, 0, width, ring, group,
                             roll[0], roll[1])
    keep_alive(work_owner)
    keep_alive(roll_owner)


_tile_blocks = njit(**_OPTS)(tile_blocks)  # the dispatcher's rule, compiled


@njit(parallel=True, **_OPTS)
def _wavefront_planes(p, group, threads):
    """One parallel region per plane: threads share out the groups of cells of
    plane t over all (sample, direction) pairs.

    Each plane's groups are listed first, so the static schedule splits equal
    groups evenly; splitting a fixed index range instead would hand all the
    work of the first planes (low i only) to one thread.
    """
    x, z_count = p.x, p.w.shape[0]
    pairs = x.shape[0] * z_count
    roll_owner = _pair_buffers(p, pairs, 0)
    roll = borrow(roll_owner)
    planes = 0
    for b in range(x.shape[0]):
        s0, s1, s2 = _extents(p.sizes, b, p.d)
        planes = max(planes, s0 + s1 + s2 - 2)
    work_owner = np.empty((pairs * x.shape[1] * ((x.shape[2] + group - 1) // group), 4),
                          np.int64)
    work = borrow(work_owner)
    for t in range(planes):
        count = 0
        for bz in range(pairs):
            s0, s1, s2 = _extents(p.sizes, bz // z_count, p.d)
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
            _wavefront_chunk(p, chunk, chunks, count, work, t, 0, 0, group, roll[0], roll[1])
    keep_alive(work_owner)
    keep_alive(roll_owner)


@njit(**_OPTS)
def _wavefront_chunk(p, chunk, chunks, count, work, t, width, ring, group, roll_h, roll_c):
    """One thread's share of a wavefront step: a run of consecutive items of
    the work list, tiles (pair, strip, block) when width > 0, else groups
    (pair, a, i0, cells) of plane t. Scratch is allocated per chunk, not per
    item."""
    z_count = p.w.shape[0]
    scratch_owner = np.empty(_scratch_len(p, group), p.x.dtype)
    sc = _carve(p, borrow(scratch_owner), group)
    for item in range(chunk * count // chunks, (chunk + 1) * count // chunks):
        bz = work[item, 0]
        b, z = bz // z_count, bz % z_count
        if width > 0:
            s0, s1, s2 = _extents(p.sizes, b, p.d)
            i_first, u_first = work[item, 1] * group, work[item, 2] * width
            _scan_steps(p, sc, roll_h, roll_c, bz, ring, b, z, i_first,
                        min(i_first + group, s1) - 1, s2, u_first, u_first + width - 1)
        else:
            _run_group(p, sc, roll_h, roll_c, bz, 0, b, z, t, work[item, 1], work[item, 2],
                       work[item, 3], p.x.shape[2], 0, 0)
    keep_alive(scratch_owner)


DRIVERS = {
    "serial": scan_serial,
    "batch": scan_batch_parallel,
    "wavefront": scan_wavefront,
}
BACKWARD_DRIVERS = ("serial", "batch")  # see scan_wavefront


def run_backward(driver, x, w, bias, d, variant, sizes, signs, inplace, h_state, c_state,
                 h, c, grad_h, grad_c, threads, pre=None, group=DEFAULT_GROUP):
    """The backward of a forward, on a numba driver ("serial" or "batch").

    Arrays in the canonical layout (see Backward); signs are the forward's;
    pre: the forward's gate activations (pre_out), or None to recompute them.
    Returns (dx, dw (Z, R, G), db (Z, G), dh_state, dc_state, flags): the
    per-(sample, direction) weight sums are added up sample by sample in
    order, so the result does not depend on the thread count; flags: the
    bits MISMATCH, BAD_GRAD_H, BAD_GRAD_C that some cell raised.
    """
    if driver not in BACKWARD_DRIVERS:
        driver = "batch" if driver == "wavefront" else driver
    z_count, n_rows, n_gates = w.shape
    n = n_gates // (3 + d)
    pairs = x.shape[0] * z_count
    dtype = x.dtype
    dx = np.zeros(x.shape, dtype)
    dw = np.zeros((pairs, n_rows, n_gates), dtype)
    db = np.zeros((pairs, n_gates), dtype)
    empty = np.empty((0,) * 5, dtype)
    dh_state = np.zeros(h_state.shape, dtype) if inplace else empty
    dc_state = np.zeros(c_state.shape, dtype) if inplace else empty
    mismatch = np.zeros(pairs, np.int64)
    n_in = x.shape[4]
    # W.T, recurrent rows first, zero-padded to whole vectors (a ragged tail of
    # input channels would run at a fraction of the speed) and 64-byte aligned.
    # Fewer input channels than a vector holds, needing a vector of their own
    # (digits: 1 of 8 lanes): left out, _backward_group gives their dx as dot
    # products.
    lanes = VEC_BYTES // dtype.itemsize
    cols = -(-n_rows // lanes) * lanes
    if n_in < lanes and cols - lanes >= n_rows - n_in:
        cols -= lanes
    wt = _aligned_zeros((z_count, n_gates, cols), dtype)
    kept_in = n_in if cols >= n_rows else 0  # input rows in wt, after the recurrent ones
    wt[:, :, :n_rows - n_in + kept_in] = np.concatenate(
        (w[:, n_in:], w[:, :kept_in]), 1).transpose(0, 2, 1)
    tol = dtype.type(1e-3 if dtype == np.float32 else 1e-7)
    prob = Backward(x, w, wt, np.zeros((z_count, wt.shape[2]), dtype), bias, d, n, variant, sizes,
                    np.ascontiguousarray(-signs), inplace, h_state, c_state, h, c,
                    empty if pre is None else pre, grad_h, grad_c, dx, dw, db, dh_state,
                    dc_state, tol, mismatch)
    DRIVERS[driver](prob, group, threads)
    # Over the samples, first to last: a reduction along the outer axis adds
    # the rows one after another (pairwise summation is for the inner axis).
    grad_w = np.add.reduce(dw.reshape(x.shape[0], z_count, n_rows, n_gates), axis=0)
    grad_b = np.add.reduce(db.reshape(x.shape[0], z_count, n_gates), axis=0)
    return dx, grad_w, grad_b, dh_state, dc_state, int(np.bitwise_or.reduce(mismatch))


def _aligned_zeros(shape, dtype):
    """Zeros of shape and dtype starting on a 64-byte boundary."""
    size = math.prod(shape)
    buf = np.zeros(size + 64 // dtype.itemsize, dtype)
    skip = (-buf.ctypes.data % 64) // dtype.itemsize
    return buf[skip:skip + size].reshape(shape)


# --- kernel-level entry point for users' own @njit code --------------------------


@njit(**_OPTS)
def forward_inplace_2d(x, weights, bias, h, c, variant):
    """One "tl" scan of a 2-D spatial LSTM, in place, callable from @njit code.

    x (B, H, W, C); weights (C + 2N, 5N) C-contiguous; bias (5N,);
    h, c (B, H+1, W+1, N) C-contiguous, boundary states in row 0 and column 0;
    variant: a code of VARIANTS (0 "slstm", 1 "graves", 2 "halved", 3 "stable").
    All arrays of one float dtype.
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
    prob = Forward(xc.reshape((b_count, 1) + x.shape[1:]),
                   weights.reshape((1,) + weights.shape), bias.reshape((1, g)),
                   2, g // 5, variant, sizes, signs, True,
                   h.reshape((b_count, 1) + h.shape[1:]),
                   c.reshape((b_count, 1) + c.shape[1:]), empty, empty, empty)
    scan_serial(prob, DEFAULT_GROUP, 1)
