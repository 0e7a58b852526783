"""The cells "halved" (any d) and "stable" (2-D only): forward and backward of
the python backend against the independent naive loops (tests/naive.py) and
finite differences, numba against python on every driver, the refusal of
"stable" outside 2-D, and no overflow on a 2000x2000 float32 scan."""

import numpy as np
import pytest
from helpers import close, fd_check, make_problem, setup_inplace
from naive import backward as naive_backward
from naive import forward as naive_forward
from naive import scan as naive_scan
from naive import scan_backward as naive_scan_backward

import fastmdlstm
from fastmdlstm import _api

needs_numba = pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
ALL_2D = ["tl", "tr", "bl", "br"]
FOUR_3D = [(1, 1, 1), (-1, 1, -1), (1, -1, 1), (-1, -1, -1)]
# name: (spatial shape, directions, ragged sizes of the two samples)
CONFIGS = {
    "1d-1": ((5,), None, [[5], [3]]),
    "1d-4": ((5,), [(1,), (-1,), (-1,), (1,)], [[2], [5]]),
    "2d-1": ((3, 4), None, [[3, 4], [2, 3]]),
    "2d-4": ((3, 4), ALL_2D, [[1, 4], [3, 2]]),
    "3d-1": ((2, 3, 2), None, [[2, 3, 2], [1, 2, 2]]),
    "3d-4": ((2, 3, 2), FOUR_3D, [[2, 2, 1], [2, 3, 2]]),
}
CASES = ([("halved", name) for name in CONFIGS]
         + [("stable", name) for name in CONFIGS if name.startswith("2d")])
SPATIAL = {1: (5,), 2: (3, 4), 3: (2, 3, 2)}
INPLACE = [("halved", 1), ("halved", 2), ("halved", 3), ("stable", 2)]


def count(directions):
    return 1 if directions is None else len(directions)


def setup(name, variant, dtype=np.float64, seed=0, backend="python"):
    """x, weights, bias (of init_params(variant=...), scaled up), h, c of
    forward, random grad_h, grad_c and forward's keywords (ragged sizes)."""
    spatial, directions, sizes = CONFIGS[name]
    x, w, b = make_problem(2, spatial, 2, 3, directions=count(directions), dtype=dtype,
                           seed=seed, scale=1.5)
    sizes = np.array(sizes, dtype=np.int64)
    kw = dict(variant=variant, directions=directions, sizes=sizes)
    h, c = fastmdlstm.forward(x, w, b, backend=backend, return_cell=True, **kw)
    rng = np.random.default_rng(seed + 100)
    grad_h = rng.standard_normal(h.shape).astype(dtype)
    grad_c = rng.standard_normal(h.shape).astype(dtype)
    return x, w, b, h, c, grad_h, grad_c, kw


# --- python backend against the naive loops ---------------------------------------


@pytest.mark.parametrize("variant,name", CASES)
def test_forward_matches_naive(variant, name):
    x, w, b, h, c, _, _, kw = setup(name, variant)
    signs = _api.parse_directions(kw["directions"], x.ndim - 2)
    h_ref, c_ref = naive_forward(x, w, b, signs, variant, kw["sizes"])
    close(h, h_ref, 1e-10)
    close(c, c_ref, 1e-10)


@pytest.mark.parametrize("with_grad_c", [False, True])
@pytest.mark.parametrize("variant,name", CASES)
def test_backward_matches_naive(variant, name, with_grad_c):
    x, w, b, h, c, gh, gc, kw = setup(name, variant)
    gc = gc if with_grad_c else None
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    signs = _api.parse_directions(kw["directions"], x.ndim - 2)
    want = naive_backward(x, w, b, signs, gh, gc, variant, kw["sizes"])
    for g, ref, arg in zip(got, want, (x, w, b)):
        assert g.shape == arg.shape and g.dtype == arg.dtype
        close(g, ref, 1e-10)


@pytest.mark.parametrize("variant,d", INPLACE)
def test_inplace_matches_naive(variant, d):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(d, variant)
    inner = (slice(None),) + (slice(1, None),) * d
    got = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                      backend="python")
    assert not got[3][inner].any() and not got[4][inner].any()
    gw, gb = np.zeros(w.shape[1:]), np.zeros(b.shape[1:])
    for s in range(x.shape[0]):
        h_ref, c_ref = naive_scan(x[s], w[0], b[0], variant, h0[s], c0[s])
        close(h[s][inner[1:]], h_ref, 1e-10)
        close(c[s][inner[1:]], c_ref, 1e-10)
        gx, gws, gbs, dh0, dc0 = naive_scan_backward(x[s], w[0], b[0], gh[s], gc[s], variant,
                                                     h0[s], c0[s])
        close(got[0][s], gx, 1e-10)
        close(got[3][s], dh0, 1e-10)
        close(got[4][s], dc0, 1e-10)
        gw, gb = gw + gws, gb + gbs
    close(got[1][0], gw, 1e-10)
    close(got[2][0], gb, 1e-10)


def test_halved_differs_from_graves_by_the_half():
    """The 1/d is in the cell: with zero input and recurrent weights, halved's
    c is g*i + (1/d)*sum_k f_k*c_k of graves' gates."""
    x, w, b = make_problem(1, (1, 1), 1, 2, seed=4)
    w[...] = 0
    h0 = np.zeros((1, 2, 2, 2))
    c0 = np.zeros((1, 2, 2, 2))
    c0[0, 0, 1] = [1.0, -2.0]   # up
    c0[0, 1, 0] = [3.0, 0.5]    # left
    sig = 1 / (1 + np.exp(-b[0]))
    g, i, f0, f1 = np.tanh(b[0][:2]), sig[4:6], sig[6:8], sig[8:10]
    for variant, want in (("graves", g * i + f0 * c0[0, 0, 1] + f1 * c0[0, 1, 0]),
                          ("halved", g * i + (f0 * c0[0, 0, 1] + f1 * c0[0, 1, 0]) / 2)):
        h, c = h0.copy(), c0.copy()
        fastmdlstm.forward_inplace(x, w, b, h, c, variant=variant, backend="python")
        np.testing.assert_allclose(c[0, 1, 1], want, rtol=1e-13)
    lam = sig[8:10]
    h, c = h0.copy(), c0.copy()
    fastmdlstm.forward_inplace(x, w, b, h, c, variant="stable", backend="python")
    np.testing.assert_allclose(c[0, 1, 1], g * i + f0 * (lam * c0[0, 0, 1]
                                                         + (1 - lam) * c0[0, 1, 0]), rtol=1e-13)


# --- finite differences of the forward ------------------------------------------------

@pytest.mark.parametrize("variant,name", [("halved", "1d-4"), ("halved", "2d-4"),
                                          ("halved", "3d-4"), ("stable", "2d-1"),
                                          ("stable", "2d-4")])
def test_finite_differences(variant, name):
    x, w, b, h, c, gh, gc, kw = setup(name, variant, seed=3)

    def loss():
        h, c = fastmdlstm.forward(x, w, b, backend="python", return_cell=True, **kw)
        return float((gh * h).sum() + (gc * c).sum())

    grads = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    # every gate block of the weights and the bias, forget/lam ones included
    fd_check(loss, (x, w, b), grads, np.random.default_rng(7), picks=12)


@pytest.mark.parametrize("variant,d", INPLACE)
def test_finite_differences_inplace(variant, d):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(d, variant, seed=5)
    inner = (slice(None),) + (slice(1, None),) * d

    def loss():
        hs, cs = h0.copy(), c0.copy()
        fastmdlstm.forward_inplace(x, w, b, hs, cs, variant=variant, backend="python")
        return float((gh * hs[inner]).sum() + (gc * cs[inner]).sum())

    grads = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                        backend="python")
    boundary = np.ones(h0.shape, dtype=bool)
    boundary[inner] = False  # only index-0 entries are inputs of the scan
    fd_check(loss, (x, w, b, h0, c0), grads, np.random.default_rng(11), picks=8,
             where=(None, None, None, boundary, boundary))


# --- numba against python, every driver ----------------------------------------------

DTYPES = [(np.float64, 1e-10), (np.float32, 1e-4)]


def _drivers(kind):
    if not fastmdlstm.HAVE_NUMBA:
        return ["serial"]
    from fastmdlstm import _kernels
    return list(_kernels.DRIVERS) if kind == "forward" else list(_kernels.BACKWARD_DRIVERS)


@needs_numba
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("driver", ["api"] + _drivers("forward"))
@pytest.mark.parametrize("variant,name", CASES)
def test_numba_forward_matches_python(variant, name, driver, dtype, tol):
    x, w, b, h, c, _, _, kw = setup(name, variant, dtype=dtype)
    if driver == "api":
        h_nb, c_nb = fastmdlstm.forward(x, w, b, backend="numba", return_cell=True, **kw)
    else:
        d = x.ndim - 2
        signs = _api.parse_directions(kw["directions"], d)
        h_nb, c_nb = np.zeros_like(h), np.zeros_like(c)
        _api._run_forward_kernel(driver, x, w, b, d, variant, signs, kw["sizes"], True,
                                 h_nb, c_nb)
    assert h_nb.dtype == c_nb.dtype == dtype
    close(h_nb, h, tol)
    close(c_nb, c, tol)


@needs_numba
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("driver", ["api"] + _drivers("backward"))
@pytest.mark.parametrize("variant,name", CASES)
def test_numba_backward_matches_python(variant, name, driver, dtype, tol):
    x, w, b, h, c, gh, gc, kw = setup(name, variant, dtype=dtype, backend="numba")
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    if driver == "api":
        got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="numba", **kw)
    else:
        from fastmdlstm import _backward
        d = x.ndim - 2
        signs = _api.parse_directions(kw["directions"], d)
        gx5, gw, gb, _, _ = _backward._run_kernel(driver, x, w, b, d, variant, kw["sizes"],
                                                  signs, False, None, None, h, c, gh, gc)
        gx = gx5.reshape(x.shape)
        _api._zero_outside(gx, kw["sizes"], x.shape[1:-1])
        got = gx, gw, gb
    for g, ref in zip(got, want):
        assert g.dtype == ref.dtype == dtype
        close(g, ref, tol)


@needs_numba
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("variant,d", INPLACE)
def test_numba_inplace_matches_python(variant, d, dtype, tol):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(d, variant, dtype=dtype)
    h_nb, c_nb = h0.copy(), c0.copy()
    fastmdlstm.forward_inplace(x, w, b, h_nb, c_nb, variant=variant, backend="numba")
    close(h_nb, h, tol)
    close(c_nb, c, tol)
    want = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                       backend="python")
    got = fastmdlstm.backward_inplace(x, w, b, h_nb, c_nb, gh, grad_c=gc, variant=variant,
                                      backend="numba")
    for g, ref in zip(got, want):
        assert g.dtype == ref.dtype == dtype
        close(g, ref, tol)


# --- "stable" is 2-D only ---------------------------------------------------------------

STABLE_2D_ONLY = r"variant 'stable' is defined for 2-D inputs only"
BACKENDS = ["python", pytest.param("numba", marks=needs_numba)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [1, 3])
def test_stable_refused_outside_2d(d, backend):
    spatial = SPATIAL[d]
    x, w, b = make_problem(1, spatial, 2, 2, seed=1)   # graves-shaped (3+d)*N parameters
    hs = np.zeros((1,) + spatial + (2,))
    state = np.zeros((1,) + tuple(s + 1 for s in spatial) + (2,))
    calls = {
        "forward": lambda: fastmdlstm.forward(x, w, b, variant="stable", backend=backend),
        "forward_inplace": lambda: fastmdlstm.forward_inplace(
            x, w, b, state.copy(), state.copy(), variant="stable", backend=backend),
        "backward": lambda: fastmdlstm.backward(x, w, b, hs, h=hs, c=hs, variant="stable",
                                                backend=backend),
        "backward_inplace": lambda: fastmdlstm.backward_inplace(
            x, w, b, state, state, hs, variant="stable", backend=backend),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=STABLE_2D_ONLY):
            call()
    # the 2-D call with the same kind of parameters is accepted
    x2, w2, b2 = make_problem(1, (2, 3), 2, 2, seed=1)
    assert np.isfinite(fastmdlstm.forward(x2, w2, b2, variant="stable", backend=backend)).all()


@pytest.mark.parametrize("d", [1, 3])
def test_stable_refused_outside_2d_params_and_layers(d):
    with pytest.raises(ValueError, match=STABLE_2D_ONLY):
        fastmdlstm.init_params(2, 3, ndim=d, variant="stable")
    with pytest.raises(ValueError, match=STABLE_2D_ONLY):
        fastmdlstm.MDLSTM(2, 3, ndim=d, variant="stable")
    if d == 3:
        with pytest.raises(ValueError, match=STABLE_2D_ONLY):
            fastmdlstm.MDLSTM3D(2, 3, variant="stable")
    w, b = fastmdlstm.init_params(2, 3, ndim=d, variant="halved")
    with pytest.raises(ValueError, match=STABLE_2D_ONLY):
        fastmdlstm.MDLSTM.from_params(w, b, ndim=d, variant="stable")
    assert fastmdlstm.MDLSTM2D(2, 3, variant="stable").variant == "stable"


def test_init_params_of_the_new_cells():
    """Gate blocks g, o, i, f, lam ("stable"): forget bias 1, lam's 0; "halved":
    every forget bias 1."""
    n = 3
    _, b = fastmdlstm.init_params(2, n, variant="stable", dtype=np.float64)
    np.testing.assert_array_equal(b[0], [0] * 3 * n + [1] * n + [0] * n)
    for d in (1, 2, 3):
        w, b = fastmdlstm.init_params(2, n, ndim=d, variant="halved", dtype=np.float64)
        assert w.shape == (1, 2 + d * n, (3 + d) * n)
        np.testing.assert_array_equal(b[0], [0] * 3 * n + [1] * d * n)


# --- saturation; no overflow on a 2000x2000 float32 scan ----------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["halved", "stable"])
def test_saturated_boundary_states(variant, backend):
    """Boundary cells at the largest float32 and forget (and lam) gates at 1:
    c stays at the largest float instead of overflowing, and the backward
    passes no gradient through the saturated cells (c's derivative 0)."""
    big = np.finfo(np.float32).max
    x, w, b = make_problem(1, (2, 3), 1, 2, dtype=np.float32, seed=2)
    b[0, 3 * 2:] = 30.0   # sigmoid(30) is 1 in float32
    h = np.zeros((1, 3, 4, 2), np.float32)
    c = np.zeros((1, 3, 4, 2), np.float32)
    c[0, 0, :] = big
    c[0, :, 0] = big
    h0, c0 = h.copy(), c.copy()
    fastmdlstm.forward_inplace(x, w, b, h, c, variant=variant, backend=backend)
    assert np.isfinite(c).all() and np.isfinite(h).all()
    np.testing.assert_array_equal(c[0, 1:, 1:], big)
    gh = np.ones((1, 2, 3, 2), np.float32)
    grads = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gh, variant=variant,
                                        backend=backend)
    assert all(np.isfinite(g).all() for g in grads)
    assert not grads[4].any()        # no gradient reaches the boundary cells
    assert grads[0].any()            # the output gate's still does
    np.testing.assert_array_equal(h0[0, 0], h[0, 0])
    np.testing.assert_array_equal(c0[0, :, 0], c[0, :, 0])


def overflow_scan(variant, forget_bias=None, size=2000):
    """h, c of a B=1, size x size, C=1, N=2 float32 scan with init_params'
    weights and inputs in [0, 1]; forget_bias overrides the forget gates'
    biases (for "stable": f's; lam keeps its 0)."""
    n = 2
    w, b = fastmdlstm.init_params(1, n, variant=variant, seed=12)
    if forget_bias is not None:
        b[0, 3 * n:4 * n if variant == "stable" else None] = forget_bias
    x = np.random.default_rng(12).uniform(0, 1, (1, size, size, 1)).astype(np.float32)
    return fastmdlstm.forward(x, w, b, variant=variant, return_cell=True, backend="numba")


@needs_numba
@pytest.mark.parametrize("forget_bias", [None, 3.0])
@pytest.mark.parametrize("variant", ["halved", "stable"])
def test_no_overflow_2000x2000_float32(variant, forget_bias):
    """Both cells average their predecessors (|c| < 1 + max |c_pred|), so |c|
    is below the longest scan path, H + W - 1, even with forget biases +3."""
    h, c = overflow_scan(variant, forget_bias)
    assert np.isfinite(h).all() and np.isfinite(c).all()
    assert float(np.abs(c).max()) < 2000 + 2000 - 1
