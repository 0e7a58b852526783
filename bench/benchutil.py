"""Helpers shared by the benchmark modules."""

import numpy as np


def gemm_roof_problem(n=2048):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return a, b, 2 * n ** 3
