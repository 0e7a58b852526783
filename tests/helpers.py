"""Shared helpers of the tests (imported as a module; conftest.py holds fixtures)."""

import numpy as np

import fastmdlstm


def make_problem(batch, spatial, channels, hidden, directions=1, dtype=np.float64, seed=0,
                 scale=1.0):
    """Random input and parameters; weights scaled up to exercise saturation."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + tuple(spatial) + (channels,)).astype(dtype)
    weights, bias = fastmdlstm.init_params(channels, hidden, directions=directions,
                                           dtype=dtype, seed=seed + 1, ndim=len(spatial))
    bias = bias + rng.uniform(-0.5, 0.5, bias.shape).astype(dtype)
    return x, (weights * scale).astype(dtype), bias


# float32 vs the float64 reference: h is bounded by 1; each pre-activation sums
# C + d*N float32 products (relative rounding ~sqrt(R) * 6e-8 of |terms| ~ 1) and
# the recurrence carries errors through c with a factor sum_k f_k < d per step,
# but gating and tanh contract them. Observed max |error| is ~1e-6; 1e-4 leaves
# room for larger problems without hiding a wrong gate (errors then are ~1e-1).
TOL = {np.float32: 1e-4, np.float64: 1e-10}


# --- shared by the backward tests (test_backward.py, test_variants.py) -----------

INPLACE_SPATIAL = {1: (5,), 2: (3, 4), 3: (2, 3, 2)}
EPS = 1e-5


def setup_inplace(d, variant, dtype=np.float64, seed=0, backend="python"):
    """x, weights, bias, the padded h, c after forward_inplace from random
    boundary states, random grad_h, grad_c for the written part, and the
    boundary states."""
    spatial = INPLACE_SPATIAL[d]
    x, w, b = make_problem(2, spatial, 2, 3, dtype=dtype, seed=seed, scale=1.5)
    rng = np.random.default_rng(seed + 200)
    shape = (2,) + tuple(s + 1 for s in spatial) + (3,)
    h = rng.uniform(-1, 1, shape).astype(dtype)
    c = rng.uniform(-2, 2, shape).astype(dtype)
    inner = (slice(None),) + (slice(1, None),) * d
    h[inner] = 0
    c[inner] = 0
    boundary = h.copy(), c.copy()
    fastmdlstm.forward_inplace(x, w, b, h, c, variant=variant, backend=backend)
    grad_h = rng.standard_normal(h[inner].shape).astype(dtype)
    grad_c = rng.standard_normal(h[inner].shape).astype(dtype)
    return x, w, b, h, c, grad_h, grad_c, boundary


def close(got, want, tol):
    """max |got - want| <= tol * max(1, max |want|)."""
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    err = float(np.abs(np.asarray(got, np.float64) - want).max(initial=0))
    assert err <= tol * scale, (err, scale)


def fd_check(loss, arrays, grads, rng, picks=5, where=None):
    """Central differences of loss() at `picks` random coordinates of each array
    (perturbed in place and restored; where: optional masks of the allowed
    coordinates) against the analytic gradients: relative error <= 1e-6."""
    for k_arr, (arr, grad) in enumerate(zip(arrays, grads)):
        flat = arr.reshape(-1)  # a view: the arrays are contiguous
        allowed = (np.arange(flat.size) if where is None or where[k_arr] is None
                   else np.flatnonzero(where[k_arr].reshape(-1)))
        for k in rng.choice(allowed, size=min(picks, allowed.size), replace=False):
            old = flat[k]
            flat[k] = old + EPS
            up = loss()
            flat[k] = old - EPS
            down = loss()
            flat[k] = old
            fd = (up - down) / (2 * EPS)
            an = grad.reshape(-1)[k]
            assert abs(fd - an) <= 1e-6 * max(abs(an), 1e-2), (k_arr, k, fd, an)
