"""Volumes and video: the d = 3 contract against the independent reference."""

import itertools

import numpy as np
import pytest
from helpers import TOL, make_problem
from naive import forward as naive_forward
from naive import scan as naive_scan

import fastmdlstm
from fastmdlstm import _api

needs_numba = pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
BACKENDS = ["python", pytest.param("numba", marks=needs_numba)]
CORNERS = list(itertools.product((1, -1), repeat=3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["slstm", "graves"])
def test_3d_matches_reference(backend, dtype, variant):
    dirs = [(1, 1, 1), (-1, 1, -1), (1, -1, 1)]
    x, w, b = make_problem(2, (3, 4, 5), 2, 3, directions=3, dtype=dtype, seed=41, scale=2)
    h, c = fastmdlstm.forward(x, w, b, variant=variant, directions=dirs, backend=backend,
                              return_cell=True)
    h_ref, c_ref = naive_forward(x, w, b, dirs, variant)
    np.testing.assert_allclose(h, h_ref, atol=TOL[dtype], rtol=0)
    np.testing.assert_allclose(c, c_ref, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_all_eight_directions_and_sizes(backend):
    x, w, b = make_problem(3, (3, 4, 3), 2, 2, directions=8, seed=43)
    sizes = np.array([[3, 4, 3], [1, 2, 3], [2, 4, 1]])
    h = fastmdlstm.forward(x, w, b, directions=CORNERS, sizes=sizes, backend=backend)
    h_ref, _ = naive_forward(x, w, b, CORNERS, sizes=sizes)
    np.testing.assert_allclose(h, h_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 4, 5), (4, 1, 3), (3, 4, 1)])
def test_3d_axis_of_length_one(backend, shape):
    x, w, b = make_problem(2, shape, 3, 2, directions=2, seed=47)
    dirs = [(1, 1, 1), (-1, -1, -1)]
    h = fastmdlstm.forward(x, w, b, directions=dirs, backend=backend)
    np.testing.assert_allclose(h, naive_forward(x, w, b, dirs)[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_forward_inplace(backend):
    x, w, b = make_problem(2, (2, 3, 4), 2, 3, seed=53)
    rng = np.random.default_rng(54)
    h = rng.uniform(-1, 1, (2, 3, 4, 5, 3))
    c = rng.uniform(-1, 1, (2, 3, 4, 5, 3))
    h0, c0 = h.copy(), c.copy()
    fastmdlstm.forward_inplace(x, w, b, h, c, backend=backend)
    for k in range(2):
        h_ref, c_ref = naive_scan(x[k], w[0], b[0], h0=h0[k], c0=c0[k])
        np.testing.assert_allclose(h[k, 1:, 1:, 1:], h_ref, atol=1e-10, rtol=0)
        np.testing.assert_allclose(c[k, 1:, 1:, 1:], c_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("bad, error", [
    (dict(directions=[(1, 1)]), ValueError),            # sign tuple of the wrong length
    (dict(directions=[(1, 0, 1)]), ValueError),         # zero sign
    (dict(directions=["tl"]), ValueError),              # 2-D names mean nothing in 3-D
    (dict(weights2d=True), ValueError),                 # weights sized for d = 2
    (dict(sizes=np.ones((2, 2), int)), ValueError),     # sizes of the wrong width
])
def test_3d_bad_input(bad, error):
    x, w, b = make_problem(2, (2, 3, 4), 2, 3, seed=59)
    if bad.pop("weights2d", False):
        w, b = fastmdlstm.init_params(2, 3, ndim=2, dtype=np.float64)
    with pytest.raises(error, match="directions|weights|sizes"):
        fastmdlstm.forward(x, w, b, **bad)


def test_3d_parse_directions():
    assert _api.parse_directions(None, 3).tolist() == [[1, 1, 1]]
    assert _api.parse_directions((1, -1, 1), 3).tolist() == [[1, -1, 1]]
