"""Training with the forward's kept gates: forward(..., return_gates=True) and
backward(..., gates=...). The gates are every cell's gate activations (tanh /
sigma of its pre-activations); a backward given them gives the gradients of one
that recomputes them (bitwise on the numba backend), and gates that do not fit
h and c are refused."""

import numpy as np
import pytest
from helpers import TOL, close, make_problem

import fastmdlstm
from fastmdlstm import _api

needs_numba = pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
NUMBA = pytest.param("numba", marks=needs_numba)
BACKENDS = ["python", NUMBA]
DTYPES = [np.float64, np.float32]
VARIANTS = ["slstm", "graves", "halved", "stable"]
# (spatial shape, directions, ragged sizes for a batch of 2)
CASES = {
    "1d-1": ((5,), None, [[5], [3]]),
    "1d-2": ((5,), [(1,), (-1,)], [[2], [5]]),
    "2d-1": ((3, 4), None, [[3, 4], [2, 3]]),
    "2d-4": ((3, 4), ["tl", "tr", "bl", "br"], [[1, 4], [3, 2]]),
    "3d-1": ((2, 3, 2), None, [[2, 3, 2], [1, 2, 2]]),
    "3d-2": ((2, 3, 2), [(1, -1, 1), (-1, 1, -1)], [[2, 2, 1], [2, 3, 2]]),
}
CASES_2D = ["2d-1", "2d-4"]


def _count(directions):
    return 1 if directions is None else len(directions)


def _combos():
    """(case, variant) pairs: every variant on the 2-D cases, the others on 1-D
    and 3-D ("stable" is 2-D only)."""
    return [(name, variant) for name in CASES for variant in VARIANTS
            if variant != "stable" or name in CASES_2D]


def setup(name, variant, dtype=np.float64, ragged=True, seed=0, backend="numba"):
    """x, weights, bias, the forward's h, c, gates and random grad_h, grad_c."""
    spatial, directions, sizes = CASES[name]
    x, w, b = make_problem(2, spatial, 2, 3, directions=_count(directions), dtype=dtype,
                           seed=seed, scale=1.5)
    sizes = np.array(sizes) if ragged else None
    kw = dict(variant=variant, directions=directions, sizes=sizes)
    h, c, gates = fastmdlstm.forward(x, w, b, backend=backend, return_gates=True, **kw)
    rng = np.random.default_rng(seed + 100)
    grad_h = rng.standard_normal(h.shape).astype(dtype)
    grad_c = rng.standard_normal(h.shape).astype(dtype)
    return x, w, b, h, c, gates, grad_h, grad_c, kw


def expected_gates(x, w, b, h, directions, sizes):
    """The definition, straight from forward's h: for each direction z and
    cell p, the pre-activations a = [x_p | h_z(p - s_0 e_0) | ... ] @ W_z + b_z
    (predecessors outside the sample's valid region are zero), then tanh of
    the first N, the logistic function of the rest; zero outside the valid
    region."""
    d = x.ndim - 2
    signs = _api.parse_directions(directions, d)
    z_count, _, n_gates = w.shape
    n = n_gates // (3 + d)
    spatial = x.shape[1:-1]
    if sizes is None:
        sizes = np.tile(spatial, (x.shape[0], 1))
    valid = np.zeros(x.shape[:-1], bool)
    for bi, size in enumerate(sizes):
        valid[(bi,) + tuple(slice(0, s) for s in size)] = True
    out = np.zeros(x.shape[:-1] + (z_count * n_gates,), np.float64)
    for z in range(z_count):
        hz = np.where(valid[..., None], h[..., z * n:(z + 1) * n], 0).astype(np.float64)
        rows = [x.astype(np.float64)]
        for k in range(d):
            axis = k + 1
            shifted = np.zeros_like(hz)
            src = [slice(None)] * hz.ndim
            dst = [slice(None)] * hz.ndim
            if signs[z, k] > 0:  # predecessor at p_k - 1
                src[axis], dst[axis] = slice(0, -1), slice(1, None)
            else:  # at p_k + 1 (zero past the sample's end: h is zero there)
                src[axis], dst[axis] = slice(1, None), slice(0, -1)
            shifted[tuple(dst)] = hz[tuple(src)]
            rows.append(shifted)
        pre = np.concatenate(rows, axis=-1) @ w[z].astype(np.float64) + b[z]
        act = np.concatenate([np.tanh(pre[..., :n]), 1 / (1 + np.exp(-pre[..., n:]))], -1)
        out[..., z * n_gates:(z + 1) * n_gates] = np.where(valid[..., None], act, 0)
    return out


def _params3(w, b):
    return (w if w.ndim == 3 else w[None]), (b if b.ndim == 2 else b[None])


# --- forward(..., return_gates=True) ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, variant", _combos())
def test_forward_gates_are_the_activations(backend, dtype, name, variant):
    x, w, b, h, c, gates, _, _, kw = setup(name, variant, dtype, backend=backend)
    d = x.ndim - 2
    assert gates.shape == x.shape[:-1] + (w.shape[0] * w.shape[2],)
    assert gates.dtype == dtype and gates.flags.c_contiguous
    assert w.shape[2] == (3 + d) * (h.shape[-1] // w.shape[0])
    want = expected_gates(x, *_params3(w, b), h, kw["directions"], kw["sizes"])
    # float64: the same products summed in another order, activations within
    # 4.2e-15; float32: rounding of the sums (|terms| ~ 1, C + d*N of them).
    tol = 1e-12 if dtype == np.float64 else 2e-6
    err = np.abs(gates - want) / (1 + np.abs(want))
    assert err.max() <= tol, err.max()
    h2, c2 = fastmdlstm.forward(x, w, b, backend=backend, return_cell=True, **kw)
    np.testing.assert_array_equal(h, h2)  # keeping the gates changes nothing else
    np.testing.assert_array_equal(c, c2)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, variant", _combos())
def test_forward_gates_numba_vs_python(dtype, name, variant):
    got = setup(name, variant, dtype, backend="numba")[5]
    want = setup(name, variant, dtype, backend="python")[5]
    close(got, want, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_return_values(backend):
    x, w, b = make_problem(2, (3, 4), 2, 3, directions=2)
    kw = dict(directions=["tl", "br"], backend=backend)
    for return_cell in (False, True):
        result = fastmdlstm.forward(x, w, b, return_cell=return_cell, return_gates=True, **kw)
        assert isinstance(result, tuple) and len(result) == 3
        h, c, gates = result
        assert h.shape == c.shape == (2, 3, 4, 6) and gates.shape == (2, 3, 4, 30)
    out = np.empty((2, 3, 4, 6))
    h, c, gates = fastmdlstm.forward(x, w, b, out=out, return_gates=True, **kw)
    assert h is out
    np.testing.assert_array_equal(h, fastmdlstm.forward(x, w, b, **kw))
    with pytest.raises(TypeError, match="return_gates must be a bool"):
        fastmdlstm.forward(x, w, b, return_gates=1, **kw)
    h = fastmdlstm.forward(x, w, b, return_gates=np.bool_(False), **kw)
    assert isinstance(h, np.ndarray)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 2), (2, 0, 4, 2), (2, 3, 0, 2)])
def test_empty_inputs(backend, shape):
    x = np.zeros(shape)
    w, b = fastmdlstm.init_params(2, 3, directions=2, dtype=np.float64, seed=0)
    kw = dict(directions=["tl", "br"], backend=backend)
    h, c, gates = fastmdlstm.forward(x, w, b, return_gates=True, **kw)
    assert h.shape == shape[:-1] + (6,) and gates.shape == shape[:-1] + (30,)
    grads = fastmdlstm.backward(x, w, b, np.zeros_like(h), h=h, c=c, gates=gates, **kw)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
    assert not any(g.any() for g in grads)


# --- backward(..., gates=...) ----------------------------------------------------


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, variant", _combos())
@pytest.mark.parametrize("ragged", [False, True])
def test_numba_backward_with_gates_is_bitwise_without(dtype, name, variant, ragged):
    x, w, b, h, c, gates, gh, gc, kw = setup(name, variant, dtype, ragged=ragged)
    for grad_c in (None, gc):
        without = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=grad_c, backend="numba",
                                      **kw)
        with_gates = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=grad_c, gates=gates,
                                         backend="numba", **kw)
        for got, want in zip(with_gates, without):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name, variant", _combos())
def test_python_backward_with_gates(name, variant):
    """python given the python forward's gates: its result without them; given
    the numba forward's: within 1e-10 of numba's (float64)."""
    x, w, b, h, c, gates, gh, gc, kw = setup(name, variant, backend="python")
    without = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    with_gates = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, gates=gates,
                                     backend="python", **kw)
    for got, want in zip(with_gates, without):
        close(got, want, 1e-10)
    if not fastmdlstm.HAVE_NUMBA:
        return
    x, w, b, h, c, gates, gh, gc, kw = setup(name, variant, backend="numba")
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="numba", **kw)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, gates=gates,
                              backend="python", **kw)
    for g, ref in zip(got, want):
        close(g, ref, 1e-10)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["1d-2", "2d-4", "3d-2"])
def test_numba_backward_given_python_gates(dtype, name):
    """Gates from the other backend are accepted (they differ by rounding only)."""
    x, w, b, h, c, gates, gh, gc, kw = setup(name, "graves", dtype, backend="python")
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, gates=gates, backend="numba",
                              **kw)
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gc, backend="python", **kw)
    for g, ref in zip(got, want):
        close(g, ref, TOL[dtype] * (100 if dtype == np.float32 else 1))


@needs_numba
def test_non_contiguous_gates():
    x, w, b, h, c, gates, gh, _, kw = setup("2d-4", "slstm")
    buf = np.zeros(gates.shape[:-1] + (2 * gates.shape[-1],))
    strided = buf[..., ::2]
    strided[...] = gates
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=gates, backend="numba", **kw)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=strided, backend="numba", **kw)
    for g, ref in zip(got, want):
        np.testing.assert_array_equal(g, ref)


def _bump_inside(gates, sizes, n, dtype):
    """gates with one candidate-block (g) activation of sample 1, direction 0
    inside its valid region moved by 1.0: c moves by i (the input gate) there."""
    region = (1,) + tuple(slice(0, s) for s in sizes[1]) + (slice(0, n),)
    block = gates[region]
    at = np.unravel_index(np.abs(block).argmin(), block.shape)
    bad = gates.copy()
    bad[(1,) + at] += dtype(1.0)
    return bad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, variant", [("1d-2", "slstm"), ("2d-4", "stable"),
                                           ("2d-1", "halved"), ("3d-2", "graves")])
def test_wrong_gates_are_refused(backend, dtype, name, variant):
    x, w, b, h, c, gates, gh, _, kw = setup(name, variant, dtype, backend=backend)
    n = h.shape[-1] // w.shape[0]
    bad = _bump_inside(gates, kw["sizes"], n, dtype)
    with pytest.raises(ValueError, match="h/c/gates do not come from forward"):
        fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=bad, backend=backend, **kw)
    other = setup(name, variant, dtype, backend=backend, seed=1)[5]  # another x and weights
    with pytest.raises(ValueError, match="gates"):
        fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=other, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, variant", [("1d-2", "slstm"), ("2d-4", "stable"),
                                           ("3d-2", "graves")])
@pytest.mark.parametrize("change", ["x", "weights", "bias"])
def test_changed_x_or_parameters_with_kept_gates_are_refused(backend, dtype, name, variant,
                                                             change):
    """Given gates, the numba backward skips the product that reads x and the
    weights; the argument checks compare each scan's first cell (no
    predecessors) with x, W and the bias, so an optimiser step taken in place
    or a reused x buffer still raises instead of giving wrong gradients."""
    x, w, b, h, c, gates, gh, _, kw = setup(name, variant, dtype, backend=backend)
    changed = {"x": x + dtype(0.5), "weights": w * dtype(1.5), "bias": b + dtype(0.5)}
    args = dict(x=x, weights=w, bias=b)
    args[change] = changed[change]
    with pytest.raises(ValueError, match="h/c/gates do not come from forward"):
        fastmdlstm.backward(args["x"], args["weights"], args["bias"], gh, h=h, c=c,
                            gates=gates, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gates_outside_the_valid_region_are_ignored(backend):
    x, w, b, h, c, gates, gh, _, kw = setup("2d-4", "graves", backend=backend)
    noisy = gates.copy()
    outside = np.ones(gates.shape[:-1], bool)
    for bi, size in enumerate(kw["sizes"]):
        outside[(bi,) + tuple(slice(0, s) for s in size)] = False
    noisy[outside] = 123.0
    want = fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=gates, backend=backend, **kw)
    got = fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=noisy, backend=backend, **kw)
    for g, ref in zip(got, want):
        np.testing.assert_array_equal(g, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gates_argument_checks(backend):
    x, w, b, h, c, gates, gh, _, kw = setup("2d-4", "slstm", backend=backend)

    def call(g):
        return fastmdlstm.backward(x, w, b, gh, h=h, c=c, gates=g, backend=backend, **kw)

    with pytest.raises(TypeError, match="gates must have dtype float64"):
        call(gates.astype(np.float32))
    with pytest.raises(ValueError, match=r"gates must have shape \(2, 3, 4, 60\)"):
        call(gates[..., :-1])
    with pytest.raises(ValueError, match="gates must have shape"):
        call(gates[:1])
    with pytest.raises(TypeError, match="gates must be a numpy.ndarray"):
        call(gates.tolist())
    with pytest.raises(TypeError, match="gates must be a numpy.ndarray"):
        call(5.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nothing_passed_in_is_written(backend, dtype):
    spatial, directions, sizes = CASES["3d-2"]
    x, w, b = make_problem(2, spatial, 2, 3, directions=2, dtype=dtype, scale=1.5)
    sizes = np.array(sizes)
    kw = dict(variant="graves", directions=directions, sizes=sizes, backend=backend)
    inputs = (x, w, b, sizes)
    copies = [a.copy() for a in inputs]
    h, c, gates = fastmdlstm.forward(x, w, b, return_gates=True, **kw)
    gh = np.random.default_rng(3).standard_normal(h.shape).astype(dtype)
    args = inputs + (h, c, gates, gh)
    copies += [a.copy() for a in args[4:]]
    fastmdlstm.backward(x, w, b, gh, h=h, c=c, grad_c=gh, gates=gates, **kw)
    for a, copy in zip(args, copies):
        np.testing.assert_array_equal(a, copy)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_infinite_pre_activations():
    """An infinite input: infinite pre-activations, saturated (finite) gates."""
    x, w, b = make_problem(1, (2, 3), 2, 3, dtype=np.float32)
    x[0, 0, 0, 0] = np.inf
    kept = {}
    for backend in ["python"] + (["numba"] if fastmdlstm.HAVE_NUMBA else []):
        h, c, gates = fastmdlstm.forward(x, w, b, backend=backend, return_gates=True)
        assert np.isfinite(gates).all() and np.isfinite(c).all()
        assert np.isin(gates[0, 0, 0, :3], [-1, 1]).all()  # tanh(+-inf)
        fastmdlstm.backward(x, w, b, np.ones_like(h), h=h, c=c, gates=gates, backend=backend)
        kept[backend] = gates
    if "numba" in kept:
        fastmdlstm.backward(x, w, b, np.ones_like(h), h=h, c=c, gates=kept["numba"],
                            backend="python")


# --- layers ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "python"])
@pytest.mark.parametrize("cls, spatial, directions, variant", [
    (fastmdlstm.MDLSTM2D, (4, 5), ("tl", "br"), "stable"),
    (fastmdlstm.MDLSTM3D, (2, 3, 2), ((1, 1, 1), (-1, 1, -1)), "halved"),
    (fastmdlstm.MDLSTM, (6,), ((1,), (-1,)), "slstm"),
])
def test_layer_keeps_the_gates(backend, cls, spatial, directions, variant):
    kw = {"ndim": len(spatial)} if cls is fastmdlstm.MDLSTM else {}
    layer = cls(3, 4, directions=directions, variant=variant, dtype=np.float64, seed=1, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + spatial + (3,))
    sizes = np.array([spatial, [max(1, s - 1) for s in spatial]])
    h = layer.forward(x, sizes, train=True, backend=backend)
    gates = layer._tape[4]
    assert gates.shape == x.shape[:-1] + (layer.weights.shape[0] * layer.weights.shape[2],)
    grad_h = rng.standard_normal(h.shape)
    grad_x = layer.backward(grad_h)
    h2, c2 = fastmdlstm.forward(x, layer.weights, layer.bias, variant=variant,
                                directions=directions, sizes=sizes, return_cell=True,
                                backend=backend)
    want = fastmdlstm.backward(x, layer.weights, layer.bias, grad_h, h=h2, c=c2,
                               variant=variant, directions=directions, sizes=sizes,
                               backend=backend)
    for got, expected in zip((grad_x, *layer.gradients()), want):
        np.testing.assert_array_equal(got, expected)


def test_layer_refuses_changed_parameters_with_gates():
    """The kept gates hide changed weights from the kernels' check, so the layer
    compares its parameters with those of the training forward."""
    layer = fastmdlstm.MDLSTM2D(2, 3, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 2))
    h = layer.forward(x, train=True)
    layer.backward(np.ones_like(h))
    before = layer.bias[0, 0]
    layer.bias[0, 0] += 1e-9
    with pytest.raises(ValueError, match="weights or bias changed since its training forward"):
        layer.backward(np.ones_like(h))
    layer.bias[0, 0] = before
    layer.backward(np.ones_like(h))  # the same values again
    layer.weights = layer.weights * 2  # replaced, not updated in place
    with pytest.raises(ValueError, match="changed"):
        layer.backward(np.ones_like(h))
    layer.forward(x, train=True)
    layer.backward(np.ones_like(h))
