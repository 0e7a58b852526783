"""Kernel-level entry points for users' own @njit code (requires numba).

    from fastmdlstm.kernels import forward_inplace_2d

    @numba.njit
    def step(x, weights, bias, h, c):
        forward_inplace_2d(x, weights, bias, h, c, 0)   # 0 = "slstm", 1 = "graves"

forward_inplace_2d(x, weights, bias, h, c, variant): one "tl" scan, in place,
on one thread, with no argument checks: x (B, H, W, C); weights (C + 2N, 5N)
C-contiguous; bias (5N,); h, c (B, H+1, W+1, N) C-contiguous with boundary
states in row 0 and column 0; all of one float dtype. It computes exactly what
fastmdlstm.forward_inplace computes (bitwise).
"""

from ._kernels import VARIANTS, forward_inplace_2d

__all__ = ["forward_inplace_2d", "VARIANTS"]
