"""numba vs python vs the independent float64 reference (tests/naive.py)."""

import numpy as np
import pytest
from helpers import TOL, make_problem
from naive import forward as naive_forward
from naive import scan as naive_scan

import fastmdlstm
from fastmdlstm import _api

needs_numba = pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
BACKENDS = ["python", pytest.param("numba", marks=needs_numba)]
DTYPES = [np.float64, np.float32]
ALL_2D = ["tl", "tr", "bl", "br"]


def check(got, want, dtype):
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["slstm", "graves"])
@pytest.mark.parametrize("directions", [None, "tl", "tr", "bl", "br", ALL_2D,
                                        [(1, -1), (-1, -1)]])
def test_matches_reference(backend, dtype, variant, directions):
    names = [directions] if isinstance(directions, str) else directions
    z = 1 if names is None else len(names)
    x, w, b = make_problem(2, (4, 5), 3, 4, directions=z, dtype=dtype, seed=z, scale=2.0)
    h, c = fastmdlstm.forward(x, w, b, variant=variant, directions=directions,
                              backend=backend, return_cell=True)
    signs = _api.parse_directions(directions, 2)
    h_ref, c_ref = naive_forward(x, w, b, signs, variant)
    check(h, h_ref, dtype)
    check(c, c_ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (3, 3), (9, 2)])
def test_edge_shapes(backend, dtype, shape):
    x, w, b = make_problem(3, shape, 2, 3, directions=4, dtype=dtype, seed=7)
    h = fastmdlstm.forward(x, w, b, directions=ALL_2D, backend=backend)
    h_ref, _ = naive_forward(x, w, b, _api.parse_directions(ALL_2D, 2))
    check(h, h_ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(backend, dtype):
    x, w, b = make_problem(0, (4, 5), 3, 4, directions=2, dtype=dtype)
    h, c = fastmdlstm.forward(x, w, b, directions=["tl", "br"], backend=backend,
                              return_cell=True, sizes=np.zeros((0, 2), dtype=int))
    assert h.shape == c.shape == (0, 4, 5, 8) and h.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["slstm", "graves"])
def test_variable_sizes(backend, dtype, variant):
    x, w, b = make_problem(4, (5, 6), 2, 3, directions=4, dtype=dtype, seed=3)
    sizes = np.array([[5, 6], [1, 1], [3, 6], [5, 2]])
    h, c = fastmdlstm.forward(x, w, b, variant=variant, directions=ALL_2D,
                              sizes=sizes, backend=backend, return_cell=True)
    h_ref, c_ref = naive_forward(x, w, b, _api.parse_directions(ALL_2D, 2), variant,
                                 sizes=sizes)
    check(h, h_ref, dtype)
    check(c, c_ref, dtype)
    # outside the valid region h and c are exactly zero, whatever is in x there
    for k, (hh, ww) in enumerate(sizes):
        assert not h[k, hh:].any() and not h[k, :, ww:].any()
        assert not c[k, hh:].any() and not c[k, :, ww:].any()
    # the padding's content does not matter
    x2 = x.copy()
    for k, (hh, ww) in enumerate(sizes):
        x2[k, hh:] = 1e3
        x2[k, :, ww:] = -7
    h2 = fastmdlstm.forward(x2, w, b, variant=variant, directions=ALL_2D,
                            sizes=sizes, backend=backend)
    np.testing.assert_array_equal(h2, h)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(backend, dtype):
    x, w, b = make_problem(3, (6, 8), 4, 3, directions=2, dtype=dtype, seed=5)
    big = np.zeros((6, 12, 16, 9), dtype=dtype)
    view = big[::2, ::2, ::2, 1::2]  # strided in every axis
    view[...] = x
    w_f = np.asfortranarray(w)
    assert not view.flags.c_contiguous and not w_f.flags.c_contiguous
    h = fastmdlstm.forward(view, w_f, b, directions=["tl", "br"], backend=backend)
    h_ref = fastmdlstm.forward(x, w, b, directions=["tl", "br"], backend=backend)
    np.testing.assert_array_equal(h, h_ref)
    # channel-last transposed view (C-order in another axis order)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(
        fastmdlstm.forward(xt, w, b, directions=["tl", "br"], backend=backend), h_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_argument(backend, dtype):
    x, w, b = make_problem(2, (4, 3), 2, 5, directions=2, dtype=dtype, seed=9)
    out = np.full((2, 4, 3, 10), np.nan, dtype=dtype)
    got = fastmdlstm.forward(x, w, b, directions=["tl", "tr"], backend=backend, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fastmdlstm.forward(x, w, b, directions=["tl", "tr"],
                                                          backend=backend))
    # out may itself be a strided view
    big = np.full((2, 4, 3, 20), np.nan, dtype=dtype)
    fastmdlstm.forward(x, w, b, directions=["tl", "tr"], backend=backend, out=big[..., ::2])
    np.testing.assert_array_equal(big[..., ::2], out)
    assert np.isnan(big[..., 1::2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["slstm", "graves"])
def test_forward_inplace_boundary_states(backend, dtype, variant):
    x, w, b = make_problem(2, (4, 6), 3, 4, dtype=dtype, seed=11)
    rng = np.random.default_rng(12)
    h = np.zeros((2, 5, 7, 4), dtype=dtype)
    c = np.zeros((2, 5, 7, 4), dtype=dtype)
    for s in (h, c):
        s[:, 0, :] = rng.uniform(-1, 1, s[:, 0, :].shape)
        s[:, :, 0] = rng.uniform(-1, 1, s[:, :, 0].shape)
        s[:, 1:, 1:] = np.nan  # must be overwritten, never read
    h0, c0 = h.copy(), c.copy()
    assert fastmdlstm.forward_inplace(x, w[0], b[0], h, c, variant=variant,
                                      backend=backend) is None
    for k in range(2):
        h_ref, c_ref = naive_scan(x[k], w[0], b[0], variant, h0=h0[k], c0=c0[k])
        check(h[k, 1:, 1:], h_ref, dtype)
        check(c[k, 1:, 1:], c_ref, dtype)
    # boundary entries (row 0 and column 0 of both tensors) are only read
    for now, before in ((h, h0), (c, c0)):
        np.testing.assert_array_equal(now[:, 0], before[:, 0])
        np.testing.assert_array_equal(now[:, :, 0], before[:, :, 0])


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_inplace_zero_boundary_equals_forward(dtype):
    x, w, b = make_problem(3, (7, 5), 2, 6, dtype=dtype, seed=13)
    h = np.zeros((3, 8, 6, 6), dtype=dtype)
    c = np.zeros_like(h)
    fastmdlstm.forward_inplace(x, w, b, h, c, backend="numba")
    h2, c2 = fastmdlstm.forward(x, w, b, backend="numba", return_cell=True)
    np.testing.assert_array_equal(h[:, 1:, 1:], h2)
    np.testing.assert_array_equal(c[:, 1:, 1:], c2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_inplace_non_contiguous_states(backend):
    x, w, b = make_problem(2, (3, 4), 2, 3, seed=14)
    big_h = np.zeros((2, 4, 5, 6))
    big_c = np.zeros((2, 4, 5, 6))
    h, c = big_h[..., ::2], big_c[..., 1::2]
    fastmdlstm.forward_inplace(x, w, b, h, c, backend=backend)
    h_ref, c_ref = naive_scan(x[1], w[0], b[0])
    check(h[1, 1:, 1:], h_ref, np.float64)
    check(c[1, 1:, 1:], c_ref, np.float64)
    assert not big_h[..., 1::2].any() and not big_c[..., ::2].any()


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ragged", [False, True])
def test_drivers_and_thread_counts_bitwise_identical(dtype, ragged, threads):
    """Every driver and thread count runs the same arithmetic per cell."""
    from fastmdlstm import _kernels
    x, w, b = make_problem(3, (9, 13), 3, 5, directions=4, dtype=dtype, seed=17)
    sizes = np.array([[9, 13], [4, 13], [9, 2]]) if ragged else None
    results = []
    for n_threads in (1, 2):
        threads(n_threads)
        for driver in _kernels.DRIVERS:
            for group in (1, 3, _kernels.DEFAULT_GROUP):
                signs = _api.parse_directions(ALL_2D, 2)
                full = np.tile([9, 13], (3, 1)) if sizes is None else sizes
                out = np.zeros((3, 9, 13, 20), dtype=dtype)
                _api._run_forward_kernel(driver, x, w, b, 2, "slstm", signs, full,
                                         sizes is not None, out, None, group=group)
                results.append(out)
        results.append(fastmdlstm.forward(x, w, b, directions=ALL_2D, sizes=sizes,
                                          backend="numba"))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_dtype_is_cast_to_input_dtype(backend):
    x, w, b = make_problem(2, (3, 4), 2, 3, dtype=np.float32, seed=19)
    h = fastmdlstm.forward(x, w.astype(np.float64), b.astype(np.float64), backend=backend)
    assert h.dtype == np.float32
    np.testing.assert_array_equal(h, fastmdlstm.forward(x, w, b, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_only_to_dependent_pixels(backend):
    x, w, b = make_problem(2, (6, 7), 2, 3, directions=4, dtype=np.float64, seed=21)
    x[1, 2, 3, 0] = np.nan
    h = fastmdlstm.forward(x, w, b, directions=ALL_2D, backend=backend)
    assert not np.isnan(h[0]).any()
    rows, cols = np.indices((6, 7))
    for z, (sr, sc) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        # in scan direction (sr, sc), pixel p depends on q iff q precedes p on both axes
        dependent = ((rows - 2) * sr >= 0) & ((cols - 3) * sc >= 0)
        nan = np.isnan(h[1, :, :, 3 * z:3 * z + 3]).all(axis=-1)
        np.testing.assert_array_equal(nan, dependent)
        assert not np.isnan(h[1, :, :, 3 * z:3 * z + 3][~dependent]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_sequences(backend):
    """d = 1 is a plain LSTM with the same gate layout (g, o, i, f)."""
    x, w, b = make_problem(2, (9,), 3, 4, directions=2, seed=23)
    h = fastmdlstm.forward(x, w, b, directions=[(1,), (-1,)], backend=backend)
    h_ref, _ = naive_forward(x, w, b, [(1,), (-1,)])
    check(h, h_ref, np.float64)


@needs_numba
@pytest.mark.parametrize("ragged", [False, True])
def test_tiled_wavefront_matches_serial_scan(ragged, threads):
    """Images large enough for several tile strips and blocks of steps of the
    wavefront driver (and a ring of fewer rows than the image), bitwise equal
    to the serial strip scan, and to the reference."""
    from fastmdlstm import _kernels
    x, w, b = make_problem(2, (41, 70), 2, 4, directions=2, seed=29)
    sizes = np.array([[41, 70], [30, 37]]) if ragged else np.tile([41, 70], (2, 1))
    signs = _api.parse_directions(("tl", "br"), 2)
    threads(2)
    assert _kernels._tile_blocks(70, _kernels.DEFAULT_GROUP, 2) == 4
    results = {}
    for driver in ("serial", "wavefront"):
        out = np.zeros((2, 41, 70, 8))
        _api._run_forward_kernel(driver, x, w, b, 2, "slstm", signs, sizes, ragged, out, None)
        results[driver] = out
    np.testing.assert_array_equal(results["wavefront"], results["serial"])
    want = fastmdlstm.forward(x, w, b, directions=("tl", "br"),
                              sizes=sizes if ragged else None, backend="python")
    check(results["serial"], want, np.float64)
