"""backward / backward_inplace: against the independent naive backward
(tests/naive.py), against central finite differences of the forward, numba vs
python, padding, argument checks and saturation."""

import numpy as np
import pytest
from helpers import close, fd_check, make_problem, setup_inplace
from naive import backward as naive_backward
from naive import scan_backward as naive_scan_backward

import fastmdlstm
from fastmdlstm import _api

needs_numba = pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
BACKENDS = ["python", pytest.param("numba", marks=needs_numba)]
VARIANTS = ["slstm", "graves"]
ALL_2D = ["tl", "tr", "bl", "br"]
FOUR_3D = [(1, 1, 1), (-1, 1, -1), (1, -1, 1), (-1, -1, -1)]
# (spatial shape, directions, ragged sizes)
CONFIGS = {
    "1d-1": ((5,), None, [[5], [3]]),
    "1d-4": ((5,), [(1,), (-1,), (-1,), (1,)], [[2], [5]]),
    "2d-1": ((3, 4), None, [[3, 4], [2, 3]]),
    "2d-4": ((3, 4), ALL_2D, [[1, 4], [3, 2]]),
    "3d-1": ((2, 3, 2), None, [[2, 3, 2], [1, 2, 2]]),
    "3d-4": ((2, 3, 2), FOUR_3D, [[2, 2, 1], [2, 3, 2]]),
}


def count(directions):
    if directions is None:
        return 1
    return 1 if isinstance(directions, str) else len(directions)


def setup(name, variant, dtype=np.float64, ragged=True, with_grad_c=True, seed=0,
          backend="python"):
    """x, weights, bias, sizes, h, c (from forward) and random grad_h, grad_c."""
    spatial, directions, sizes = CONFIGS[name]
    x, w, b = make_problem(2, spatial, 2, 3, directions=count(directions), dtype=dtype,
                           seed=seed, scale=1.5)
    sizes = np.array(sizes) if ragged else None
    h, c = fastmdlstm.forward(x, w, b, variant=variant, directions=directions, sizes=sizes,
                              backend=backend, return_cell=True)
    rng = np.random.default_rng(seed + 100)
    grad_h = rng.standard_normal(h.shape).astype(dtype)
    grad_c = rng.standard_normal(h.shape).astype(dtype) if with_grad_c else None
    kw = dict(variant=variant, directions=directions, sizes=sizes)
    return x, w, b, h, c, grad_h, grad_c, kw


# --- against the independent naive backward -----------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("ragged,with_grad_c", [(False, False), (True, True), (True, False)])
def test_matches_naive(backend, variant, name, ragged, with_grad_c):
    x, w, b, h, c, gh, gc, kw = setup(name, variant, ragged=ragged, with_grad_c=with_grad_c)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend=backend, **kw)
    signs = _api.parse_directions(kw["directions"], x.ndim - 2)
    want = naive_backward(x, w, b, signs, gh, gc, variant, kw["sizes"])
    for g, ref, arg in zip(got, want, (x, w, b)):
        assert g.shape == arg.shape and g.dtype == arg.dtype
        close(g, ref, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_inplace_matches_naive(backend, variant, d):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(d, variant)
    got = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                      backend=backend)
    assert [g.shape for g in got] == [x.shape, w.shape, b.shape, h.shape, c.shape]
    inner = (slice(None),) + (slice(1, None),) * d
    assert not got[3][inner].any() and not got[4][inner].any()
    gw, gb = np.zeros(w.shape[1:]), np.zeros(b.shape[1:])
    for s in range(x.shape[0]):
        gx, gws, gbs, dh0, dc0 = naive_scan_backward(x[s], w[0], b[0], gh[s], gc[s], variant,
                                                     h0[s], c0[s])
        close(got[0][s], gx, 1e-10)
        close(got[3][s], dh0, 1e-10)
        close(got[4][s], dc0, 1e-10)
        gw, gb = gw + gws, gb + gbs
    close(got[1][0], gw, 1e-10)
    close(got[2][0], gb, 1e-10)


# --- against central finite differences of the forward ---------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["1d-4", "2d-1", "2d-4", "3d-4"])
def test_finite_differences(backend, variant, name):
    x, w, b, h, c, gh, gc, kw = setup(name, variant, seed=3)

    def loss():
        h, c = fastmdlstm.forward(x, w, b, backend="python", return_cell=True, **kw)
        return float((gh * h).sum() + (gc * c).sum())

    grads = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend=backend, **kw)
    fd_check(loss, (x, w, b), grads, np.random.default_rng(7))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [2, 3])
def test_finite_differences_inplace(backend, variant, d):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(d, variant, seed=5)
    inner = (slice(None),) + (slice(1, None),) * d

    def loss():
        hs, cs = h0.copy(), c0.copy()
        fastmdlstm.forward_inplace(x, w, b, hs, cs, variant=variant, backend="python")
        return float((gh * hs[inner]).sum() + (gc * cs[inner]).sum())

    grads = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                        backend=backend)
    rng = np.random.default_rng(11)
    fd_check(loss, (x, w, b), grads[:3], rng)
    # boundary states: only index-0 entries are inputs of the scan
    boundary = np.zeros(h0.shape, dtype=bool)
    for k in range(d):
        boundary[(slice(None),) * (k + 1) + (0,)] = True
    fd_check(loss, (h0, c0), grads[3:5], rng, picks=8, where=(boundary, boundary))


# --- numba vs python ---------------------------------------------------------------


@needs_numba
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["1d-4", "2d-1", "2d-4", "3d-1", "3d-4"])
def test_numba_matches_python(dtype, tol, variant, name):
    x, w, b, h, c, gh, gc, kw = setup(name, variant, dtype=dtype, backend="numba")
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="numba", **kw)
    for g, ref in zip(got, want):
        assert g.dtype == ref.dtype == dtype
        close(g, ref, tol)


@needs_numba
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("name,channels,hidden", [("2d-4", 1, 4), ("2d-4", 1, 3),
                                                  ("3d-4", 2, 8), ("2d-4", 7, 5)])
def test_numba_matches_python_few_inputs(dtype, tol, name, channels, hidden):
    """Fewer input channels than a vector holds: where the inputs would need
    a vector of their own (2d N=4, 3d N=8; float32 2d N=5, C=7, whose
    recurrent rows end part-way into a vector) the numba backward gives dx as
    dot products, where they fit the recurrent rows' padding (2d N=3) as part
    of the da @ W.T product; both agree with python."""
    spatial, directions, sizes = CONFIGS[name]
    x, w, b = make_problem(2, spatial, channels, hidden, directions=count(directions),
                           dtype=dtype, seed=3, scale=1.5)
    kw = dict(directions=directions, sizes=np.array(sizes))
    h, c = fastmdlstm.forward(x, w, b, backend="numba", return_cell=True, **kw)
    grad_h = np.random.default_rng(4).standard_normal(h.shape).astype(dtype)
    want = fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, backend="python", **kw)
    got = fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, backend="numba", **kw)
    for g, ref in zip(got, want):
        close(g, ref, tol)


@needs_numba
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_numba_matches_python_inplace(dtype, tol, variant, d):
    x, w, b, h, c, gh, gc, _ = setup_inplace(d, variant, dtype=dtype, backend="numba")
    want = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                       backend="python")
    got = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                      backend="numba")
    for g, ref in zip(got, want):
        assert g.dtype == dtype and g.shape == ref.shape
        close(g, ref, tol)


# Scans longer than the kernels' OUTER_CELLS (64): the numba backward defers the
# weight gradient and adds it in passes over dw, mid-scan and at each scan's end.
LONG_SCANS = {
    "1d": ((150,), [(1,), (-1,)], [[150], [97]]),
    "2d": ((11, 13), ALL_2D, [[11, 13], [7, 10]]),
    "3d": ((3, 6, 7), FOUR_3D, [[3, 6, 7], [2, 5, 6]]),
}


@needs_numba
@pytest.mark.parametrize("gates", [False, True])
@pytest.mark.parametrize("name", list(LONG_SCANS))
def test_numba_matches_python_long_scans(name, gates):
    spatial, directions, sizes = LONG_SCANS[name]
    x, w, b = make_problem(2, spatial, 2, 3, directions=len(directions), seed=3, scale=1.5)
    kw = dict(variant="graves", directions=directions, sizes=np.array(sizes))
    *state, kept = fastmdlstm.forward(x, w, b, return_cell=True, return_gates=True,
                                      backend="numba", **kw)
    h, c = state
    rng = np.random.default_rng(4)
    gh, gc = rng.standard_normal(h.shape), rng.standard_normal(h.shape)
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="numba",
                              gates=kept if gates else None, **kw)
    for g, ref in zip(got, want):
        close(g, ref, 1e-10)
    assert np.abs(want[1]).max() > 0


@needs_numba
def test_numba_matches_python_inplace_long_scan():
    x, w, b = make_problem(2, (9, 12), 2, 3, seed=6, scale=1.5)
    rng = np.random.default_rng(7)
    h0, c0 = rng.uniform(-1, 1, (2, 10, 13, 3)), rng.uniform(-1, 1, (2, 10, 13, 3))
    hs, cs = h0.copy(), c0.copy()
    fastmdlstm.forward_inplace(x, w, b, hs, cs, backend="numba")
    gh = rng.standard_normal(x.shape[:-1] + (3,))
    want = fastmdlstm.backward_inplace(x, w, b, hs, cs, gh, backend="python")
    got = fastmdlstm.backward_inplace(x, w, b, hs, cs, gh, backend="numba")
    for g, ref in zip(got, want):
        close(g, ref, 1e-10)


# --- padding, shapes and dtypes ----------------------------------------------------------


def outside(sizes, spatial):
    mask = np.ones((len(sizes),) + tuple(spatial), dtype=bool)
    for s, size in enumerate(sizes):
        mask[(s,) + tuple(slice(0, v) for v in size)] = False
    return mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["2d-4", "3d-4"])
def test_padding_ignored(backend, name):
    x, w, b, h, c, gh, gc, kw = setup(name, "slstm")
    grads = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend=backend, **kw)
    pad = outside(kw["sizes"], x.shape[1:-1])
    assert pad.any() and not grads[0][pad].any()
    rng = np.random.default_rng(1)
    x2, gh2, gc2 = x.copy(), gh.copy(), gc.copy()
    x2[pad] = rng.standard_normal(x2[pad].shape)
    gh2[pad] = np.nan  # ignored, not refused
    gc2[pad] = 1e3
    h2, c2 = fastmdlstm.forward(x2, w, b, backend="python", return_cell=True, **kw)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(c2, c)
    again = fastmdlstm.backward(x2, w, b, gh2, h=h2, c=c2, grad_c=gc2, backend=backend, **kw)
    for g, ref in zip(again, grads):
        np.testing.assert_array_equal(g, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["2d-4", "3d-4"])
@pytest.mark.parametrize("key", ["grad_h", "grad_c"])
def test_non_finite_anywhere_valid_is_refused(backend, name, key):
    """A NaN or inf in any valid cell of grad_h/grad_c, for any direction,
    must be refused, each sample's last valid cell included (only the region
    outside sizes is ignored: test_padding_ignored)."""
    x, w, b, h, c, gh, gc, kw = setup(name, "slstm")
    n_dirs = len(kw["directions"])
    n = gh.shape[-1] // n_dirs
    rng = np.random.default_rng(7)
    cases = [(s, tuple(v - 1 for v in size)) for s, size in enumerate(kw["sizes"])]
    cases += [(s, tuple(int(rng.integers(v)) for v in size)) for s, size in
              enumerate(kw["sizes"])]
    for (s, cell), bad in zip(cases, [np.nan, np.inf, -np.inf] * len(cases)):
        grads = {"grad_h": gh.copy(), "grad_c": gc.copy()}
        unit = int(rng.integers(n_dirs)) * n + int(rng.integers(n))
        grads[key][(s,) + cell + (unit,)] = bad
        with pytest.raises(ValueError, match=f"{key} contains NaN or inf"):
            fastmdlstm.backward(x, w, b, grads["grad_h"], h=h, c=c, grad_c=grads["grad_c"],
                                backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_shapes_and_dtypes(backend):
    x, w, b, h, c, gh, gc, kw = setup("2d-1", "graves", dtype=np.float32)
    # 2-D weights and 1-D bias give 2-D and 1-D gradients, in their own dtype
    w2, b1 = w[0].astype(np.float64), b[0].astype(np.float64)
    gx, gw, gb = fastmdlstm.backward(x, w2, b1, gh, h=h, c=c, backend=backend, **kw)
    assert gx.dtype == np.float32 and gx.shape == x.shape
    assert gw.dtype == gb.dtype == np.float64 and gw.shape == w2.shape and gb.shape == b1.shape
    ref = fastmdlstm.backward(x, w, b, gh, h=h, c=c, backend=backend, **kw)
    close(gw, ref[1][0], 1e-6)
    # grad_c=None is a zero grad_c
    zero = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=np.zeros_like(gh),
                               backend=backend, **kw)
    for g, r in zip(zero, ref):
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w, b = make_problem(0, (3, 4), 2, 3, directions=2)
    h, c = fastmdlstm.forward(x, w, b, directions=["tl", "br"], return_cell=True)
    gx, gw, gb = fastmdlstm.backward(x, w, b, np.zeros_like(h), h=h, c=c,
                                     directions=["tl", "br"], backend=backend)
    assert gx.shape == x.shape and not gw.any() and not gb.any() and gw.shape == w.shape


# --- bad input: clear errors, nothing written -------------------------------------------

def _other_weights(a):
    a["h"], a["c"] = fastmdlstm.forward(a["x"], a["w"] * 0.5, a["b"], return_cell=True,
                                        directions=ALL_2D, sizes=a["sizes"], backend="python")


def _set(key, value):
    def change(a):
        a[key] = value(a) if callable(value) else value
    return change


def _nan_at(key):
    def change(a):
        a[key] = a[key].copy()
        a[key][0, 0, 0, 0] = np.nan
    return change


def _bump_c(a):
    a["c"] = a["c"].copy()
    a["c"][1, 1, 1, 2] += 0.01


def _both(*changes):
    def change(a):
        for one in changes:
            one(a)
    return change


class _Sub(np.ndarray):
    """A subclass with no special rules: refused all the same (like forward's)."""


BAD = {  # name: (change, exception, words in the message)
    "grad_h shape": (_set("gh", lambda a: a["gh"][..., :-1]), ValueError, "grad_h"),
    "grad_h dtype": (_set("gh", lambda a: a["gh"].astype(np.float32)), TypeError, "grad_h"),
    "grad_h list": (_set("gh", lambda a: a["gh"].tolist()), TypeError, "grad_h"),
    "grad_c shape": (_set("gc", lambda a: a["gc"][:1]), ValueError, "grad_c"),
    "grad_c dtype": (_set("gc", lambda a: a["gc"].astype(np.float32)), TypeError, "grad_c"),
    "h shape": (_set("h", lambda a: a["h"][:, :, :-1]), ValueError, "h must"),
    "c dtype": (_set("c", lambda a: a["c"].astype(np.float32)), TypeError, "c must"),
    "h other weights": (_other_weights, ValueError, "h/c do not come from forward"),
    "c perturbed": (_bump_c, ValueError, "h/c do not come from forward"),
    "grad_h nan": (_nan_at("gh"), ValueError, "grad_h contains NaN or inf"),
    "grad_c inf": (_set("gc", lambda a: a["gc"] * np.inf), ValueError, "grad_c contains NaN"),
    # Several faults: the same one is named whichever backend (the numba kernel finds
    # them all in one pass).
    "grad_h nan, other h": (_both(_other_weights, _nan_at("gh")), ValueError,
                            "grad_h contains NaN or inf"),
    "grad_c nan, other h": (_both(_other_weights, _nan_at("gc")), ValueError,
                            "grad_c contains NaN or inf"),
    "both nan": (_both(_nan_at("gc"), _nan_at("gh")), ValueError, "grad_h contains NaN"),
    "grad_h masked": (_set("gh", lambda a: np.ma.masked_invalid(a["gh"])), TypeError,
                      "grad_h must be a plain numpy.ndarray"),
    "c matrix subclass": (_set("c", lambda a: a["c"].view(_Sub)), TypeError,
                          "c must be a plain numpy.ndarray"),
    "variant": (_set("variant", "lstm"), ValueError, "variant"),
    "other variant": (_set("variant", "graves"), ValueError, "h/c do not come from forward"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(backend, case):
    x, w, b, h, c, gh, gc, kw = setup("2d-4", "slstm")
    a = dict(x=x, w=w, b=b, h=h, c=c, gh=gh, gc=gc, sizes=kw["sizes"], variant="slstm")
    change, error, words = BAD[case]
    change(a)
    before = {k: v.copy() for k, v in a.items() if isinstance(v, np.ndarray)}
    with pytest.raises(error, match=words):
        fastmdlstm.backward(a["x"], a["w"], a["b"], a["gh"], h=a["h"], c=a["c"],
                            grad_c=a["gc"], variant=a["variant"], directions=ALL_2D,
                            sizes=a["sizes"], backend=backend)
    for k, v in before.items():
        np.testing.assert_array_equal(a[k], v)


def _bump_boundary(a):
    a["c"] = a["c"].copy()
    a["c"][0, 0, 2, 1] += 0.5  # a boundary state changed after the forward


def _two_directions(a):
    a["w"], a["b"] = np.concatenate([a["w"]] * 2), np.concatenate([a["b"]] * 2)


BAD_INPLACE = {
    "h inner shape": (_set("h", lambda a: a["h"][:, 1:, 1:]), ValueError, "h must"),
    "c dtype": (_set("c", lambda a: a["c"].astype(np.float32)), TypeError, "c must"),
    "grad_h padded": (_set("gh", lambda a: np.zeros_like(a["h"])), ValueError, "grad_h"),
    "grad_c dtype": (_set("gc", lambda a: a["gc"].astype(np.float32)), TypeError, "grad_c"),
    "grad_h inf": (_set("gh", lambda a: a["gh"] / 0.0), ValueError, "grad_h contains NaN"),
    "two directions": (_two_directions, ValueError, "one direction"),
    "boundary changed": (_bump_boundary, ValueError, "h/c do not come from forward"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_INPLACE))
def test_bad_input_inplace(backend, case):
    x, w, b, h, c, gh, gc, _ = setup_inplace(2, "slstm")
    a = dict(x=x, w=w, b=b, h=h, c=c, gh=gh, gc=gc)
    change, error, words = BAD_INPLACE[case]
    with np.errstate(divide="ignore", invalid="ignore"):
        change(a)
    before = {k: v.copy() for k, v in a.items()}
    with pytest.raises(error, match=words):
        fastmdlstm.backward_inplace(a["x"], a["w"], a["b"], a["h"], a["c"], a["gh"],
                                    grad_c=a["gc"], backend=backend)
    for k, v in before.items():
        np.testing.assert_array_equal(a[k], v)


# --- saturation -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_saturated_cells_give_finite_gradients(backend, dtype, variant):
    x, w, b, h, c, gh, gc, (h0, c0) = setup_inplace(2, variant, dtype=dtype)
    big = np.finfo(dtype).max
    b = b.copy()
    b[0, 9:] = 8.0  # forget gates ~1: c sums its predecessors
    # Boundary cell states of one sign near the largest float: every cell saturates.
    # (Mixed signs can cancel into huge unsaturated cells whose exact gradients,
    # through f * c_prev, overflow: that is the math, not the clip.)
    c0[...] = 0
    c0[:, 0], c0[:, :, 0] = 0.9 * big, 0.9 * big
    h, c = h0.copy(), c0.copy()
    with np.errstate(over="ignore"):
        fastmdlstm.forward_inplace(x, w, b, h, c, variant=variant, backend=backend)
    assert (np.abs(c[:, 1:, 1:]) == big).any()
    grads = fastmdlstm.backward_inplace(x, w, b, h, c, gh, grad_c=gc, variant=variant,
                                        backend=backend)
    for g in grads:
        assert np.isfinite(g).all()
    assert not grads[4].any()  # no gradient flows back through a saturated cell


@needs_numba
@pytest.mark.parametrize("gates", [False, True])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("variant", ["slstm", "graves", "halved", "stable"])
def test_gates_at_their_floor_have_zero_derivative(variant, dtype, tol, gates):
    """An input of 1e30 pushes every gate of its cell past the logistic function's
    clamp (-40), where the numba forward's gate is the constant 0 and its
    derivative 0 (the constant was sigma(-40) ~ 4e-18, whose s(1 - s) times 1e30
    put 2e10 into grad_w where the python backend and finite differences give
    ~0.1)."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4, 2)).astype(dtype)
    x[0, 1, 1, 0] = 1e30
    w, b = fastmdlstm.init_params(2, 3, directions=4, dtype=dtype, seed=0, variant=variant)
    with np.errstate(over="ignore", invalid="ignore"):
        h, c, g = fastmdlstm.forward(x, w, b, variant=variant, directions=ALL_2D,
                                     return_gates=True, backend="numba")
        assert (g[0, 1, 1] == 0).any()  # gates at their floor
        grad_h = rng.standard_normal(h.shape).astype(dtype)
        kw = dict(variant=variant, directions=ALL_2D, gates=g if gates else None)
        want = fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, backend="python", **kw)
        got = fastmdlstm.backward(x, w, b, grad_h, h=h, c=c, backend="numba", **kw)
    for a, ref in zip(got, want):
        close(a, ref, tol)


# --- layouts and threads ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_arguments(backend):
    """Non-contiguous x, h, c, grad_h, grad_c give the same gradients."""
    x, w, b, h, c, gh, gc, kw = setup("2d-4", "graves")
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend=backend, **kw)

    def strided(a):
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]

    args = [strided(a) for a in (x, gh, h, c, gc)]
    assert not args[0].flags.c_contiguous
    got = fastmdlstm.backward(args[0], w, b, args[1], h=args[2], c=args[3], grad_c=args[4],
                              backend=backend, **kw)
    for g, ref in zip(got, want):
        np.testing.assert_array_equal(g, ref)


@needs_numba
def test_any_layout_runs_the_compiled_kernels():
    """Read-only, Fortran-order, strided and broadcast arguments (a broadcast
    grad_h is the gradient of a sum), with and without gates and grad_c, run
    the kernels the plain call compiled: no compile of their own (~80 s each),
    and the same gradients bitwise."""
    from fastmdlstm import _kernels

    x, w, b, h, c, gh, gc, kw = setup("2d-4", "graves", backend="numba")
    g = fastmdlstm.forward(x, w, b, return_gates=True, backend="numba", **kw)[2]

    def run(x, w, b, gh, h, c, gc, g):
        return fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, gates=g,
                                   backend="numba", **kw)

    plain = (x, w, b, gh, h, c, gc, g)
    want = [run(*plain), run(*plain[:6], None, None)]  # compiles (or loads) what it needs

    def compiled():
        return sum(len(f.signatures) for f in set(_kernels.DRIVERS.values()))

    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    def strided(a):
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]

    before = compiled()
    for change in (read_only, np.asfortranarray, strided):
        args = [change(a) for a in plain]
        np.testing.assert_equal(run(*args), want[0])
        np.testing.assert_equal(run(*args[:6], None, None), want[1])
    ones = np.broadcast_to(np.ones((), gh.dtype), gh.shape)
    np.testing.assert_equal(run(x, w, b, ones, h, c, None, g),
                            run(x, w, b, np.ones_like(gh), h, c, None, g))
    assert compiled() == before


@needs_numba
@pytest.mark.parametrize("name", ["2d-4", "3d-1"])
def test_numba_independent_of_thread_count(threads, name):
    x, w, b, h, c, gh, gc, kw = setup(name, "slstm", backend="numba")
    results = []
    for t in (1, 2):
        threads(t)
        results.append(fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc,
                                           backend="numba", **kw))
    for g1, g2 in zip(*results):
        np.testing.assert_array_equal(g1, g2)
