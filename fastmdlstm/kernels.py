"""Kernel-level entry points for users' own @njit code (requires numba).

    import numba
    import fastmdlstm
    from fastmdlstm.kernels import forward_inplace_2d

    weights, bias = fastmdlstm.init_params(3, 16, seed=0)   # (1, 3 + 32, 80), (1, 80)

    @numba.njit
    def step(x, weights, bias, h, c):
        forward_inplace_2d(x, weights, bias, h, c, 0)   # 0 = "slstm"; VARIANTS has the codes

forward_inplace_2d(x, weights, bias, h, c, variant): one "tl" scan, in place,
on one thread. Shape contract (all arrays of one float dtype, float32 or float64):

    x        (B, H, W, C)        any layout
    weights  (C + 2N, 5N)        or (1, C + 2N, 5N), as init_params returns; C-contiguous
    bias     (5N,)               or (1, 5N)
    h, c     (B, H+1, W+1, N)    C-contiguous; row 0 and column 0 hold the boundary
                                 states (only read), the rest is written
    variant  a code of VARIANTS: 0 "slstm", 1 "graves", 2 "halved", 3 "stable"

Dimensions, dtypes and layouts are checked when the caller compiles (a short
TypingError naming the argument); shapes when it runs (a ValueError; a few
comparisons, nothing that grows with the image). Nothing else is checked, unlike
fastmdlstm.forward_inplace: h and c must not overlap x, the parameters or each
other. It computes exactly what fastmdlstm.forward_inplace computes (bitwise).
"""

import numba
from numba import types
from numba.core.errors import TypingError
from numba.extending import overload

from . import _kernels
from ._kernels import VARIANTS

__all__ = ["forward_inplace_2d", "VARIANTS"]

_VARIANT_COUNT = len(VARIANTS)  # codes 0 .. _VARIANT_COUNT - 1


def forward_inplace_2d(x, weights, bias, h, c, variant):
    """One "tl" scan of a 2-D spatial LSTM, in place (see the module docstring).

    Callable from @njit code and from Python; weights (C + 2N, 5N) or
    (1, C + 2N, 5N), bias (5N,) or (1, 5N). Returns None.
    """
    if numba.config.DISABLE_JIT:  # plain Python (the coverage run): no overload applies
        if weights.ndim == 3:
            if weights.shape[0] != 1 or bias.shape[0] != 1:
                raise ValueError("forward_inplace_2d: weights (Z, C + 2N, 5N) and bias "
                                 "(Z, 5N) must hold one direction, Z = 1")
            weights, bias = weights[0], bias[0]
        _check_shapes(x, weights, bias, h, c, variant)
        _kernels.forward_inplace_2d(x, weights, bias, h, c, variant)
        return
    _entry(x, weights, bias, h, c, variant)


def _typing_error(message):
    return TypingError(f"forward_inplace_2d: {message}")


def _check_types(x, weights, bias, h, c, variant):
    """The compile-time part of the contract: ndim, dtype, layout per argument."""
    arrays = {"x": x, "weights": weights, "bias": bias, "h": h, "c": c}
    for name, value in arrays.items():
        if not isinstance(value, types.Array):
            raise _typing_error(f"{name} must be an array, got {value}")
    dtype = x.dtype
    if dtype not in (types.float32, types.float64):
        raise _typing_error(f"x must be float32 or float64, got {dtype}")
    for name, value in arrays.items():
        if value.dtype != dtype:
            raise _typing_error(f"{name} must have x's dtype {dtype}, got {value.dtype}")
    if x.ndim != 4:
        raise _typing_error(f"x must be 4-D (B, H, W, C), got {x.ndim}-D")
    for name in ("h", "c"):
        if arrays[name].ndim != 4 or arrays[name].layout != "C":
            raise _typing_error(f"{name} must be a C-contiguous 4-D array (B, H+1, W+1, N), "
                                f"got {arrays[name]}")
    if weights.ndim not in (2, 3) or weights.layout != "C":
        raise _typing_error("weights must be a C-contiguous (C + 2N, 5N) or "
                            f"(1, C + 2N, 5N) array, got {weights}")
    if bias.ndim != weights.ndim - 1:
        shape = "(5N,)" if weights.ndim == 2 else "(1, 5N)"
        raise _typing_error(f"bias must be {shape} to go with {weights.ndim}-D weights, "
                            f"got {bias.ndim}-D")
    if not isinstance(variant, (types.Integer, types.IntegerLiteral)):
        raise _typing_error(f"variant must be an integer code of VARIANTS, got {variant}")


@numba.njit(cache=True, nogil=True)
def _check_shapes(x, weights, bias, h, c, variant):
    """The run-time part: shapes agree (one direction, C + 2N rows, 5N gates)."""
    if weights.shape[1] % 5 != 0 or weights.shape[1] == 0:
        raise ValueError("forward_inplace_2d: weights must have 5N columns, N >= 1")
    n = weights.shape[1] // 5
    if weights.shape[0] != x.shape[3] + 2 * n:
        raise ValueError("forward_inplace_2d: weights must have C + 2N rows "
                         "(C = x.shape[3], N = weights.shape[-1] // 5)")
    if bias.shape[0] != weights.shape[1]:
        raise ValueError("forward_inplace_2d: bias must have 5N entries, as weights columns")
    for s in (h.shape, c.shape):
        if (s[0] != x.shape[0] or s[1] != x.shape[1] + 1 or s[2] != x.shape[2] + 1
                or s[3] != n):
            raise ValueError("forward_inplace_2d: h and c must have shape (B, H+1, W+1, N)")
    if variant < 0 or variant >= _VARIANT_COUNT:
        raise ValueError("forward_inplace_2d: variant must be a code of "
                         "fastmdlstm.kernels.VARIANTS (0 slstm, 1 graves, 2 halved, 3 stable)")


@overload(forward_inplace_2d, jit_options={"nogil": True})
def _forward_inplace_2d(x, weights, bias, h, c, variant):
    _check_types(x, weights, bias, h, c, variant)
    if weights.ndim == 3:  # init_params' (1, C + 2N, 5N) and (1, 5N)
        def impl(x, weights, bias, h, c, variant):
            if weights.shape[0] != 1 or bias.shape[0] != 1:
                raise ValueError("forward_inplace_2d: weights (Z, C + 2N, 5N) and bias "
                                 "(Z, 5N) must hold one direction, Z = 1")
            _check_shapes(x, weights[0], bias[0], h, c, variant)
            _kernels.forward_inplace_2d(x, weights[0], bias[0], h, c, variant)
        return impl

    def impl(x, weights, bias, h, c, variant):
        _check_shapes(x, weights, bias, h, c, variant)
        _kernels.forward_inplace_2d(x, weights, bias, h, c, variant)
    return impl


@numba.njit(cache=True, nogil=True)
def _entry(x, weights, bias, h, c, variant):
    forward_inplace_2d(x, weights, bias, h, c, variant)
