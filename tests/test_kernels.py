"""Kernel-level contracts: activation accuracy, user @njit code, no-numba import."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import make_problem
from naive import _cell as naive_cell
from naive import _cell_grads as naive_cell_grads
from naive import scan as naive_scan

import fastmdlstm

numba = pytest.importorskip("numba")
from fastmdlstm import _kernels  # noqa: E402


def float32_probe_points():
    """A dense grid over the whole interesting range, saturation included, plus
    random bit patterns spread over all finite float32 and special values."""
    grid = np.linspace(-20, 20, 4_000_001, dtype=np.float32)
    fine = np.linspace(-1e-3, 1e-3, 200_001, dtype=np.float32)
    bits = np.random.default_rng(0).integers(0, 2**32, 2_000_000, dtype=np.uint64)
    spread = bits.astype(np.uint32).view(np.float32)
    spread = spread[np.isfinite(spread)]
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38,
                        8.9, 9.0, 9.1, -9.0, 17.9, 18.0, 18.1, -18.0], np.float32)
    return np.concatenate([grid, fine, spread, special])


@pytest.mark.parametrize("sigmoid", [False, True])
def test_float32_activation_error(sigmoid):
    x = float32_probe_points()
    got = np.empty_like(x)
    _kernels.activation_array(x, got, sigmoid)
    x64 = x.astype(np.float64)
    want = 0.5 + 0.5 * np.tanh(0.5 * x64) if sigmoid else np.tanh(x64)
    err = np.abs(got.astype(np.float64) - want)
    # The contract is 5e-7; the implementation reaches 9e-8 (README), and this
    # bound catches a loss of accuracy well before the contract is broken.
    assert err.max() <= 1e-7, (err.max(), x[err.argmax()])


@pytest.mark.parametrize("sigmoid", [False, True])
def test_float64_activation_error(sigmoid):
    x = np.concatenate([np.linspace(-40, 40, 2_000_001),
                        np.random.default_rng(1).standard_normal(500_000) * 10,
                        [0.0, -0.0, 5e-324, 1e300, -1e300]])
    got = np.empty_like(x)
    _kernels.activation_array(x, got, sigmoid)
    want = 0.5 + 0.5 * np.tanh(0.5 * x) if sigmoid else np.tanh(x)
    assert np.abs(got - want).max() <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0], dtype)
    got = np.empty_like(x)
    _kernels.activation_array(x, got, False)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == -1 and got[3] == 0
    _kernels.activation_array(x, got, True)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == 0 and got[3] == 0.5
    # Below the clamp (-40) the logistic function is 0, not the constant
    # sigma(-40) ~ 4e-18, so that the backward's s(1 - s) is the clamped
    # function's derivative there, 0; at -40 and above it is positive.
    x = np.array([-40.5, -1e30, np.nextafter(dtype(-40), dtype(-50)), -40.0, -39.9], dtype)
    got = np.empty_like(x)
    _kernels.activation_array(x, got, True)
    assert (got[:3] == 0).all() and (got[3:] > 0).all()


def test_user_njit_code_calls_the_kernel():
    """The documented kernel-level entry point, called from a user's @njit."""
    kernel = fastmdlstm.kernels.forward_inplace_2d

    @numba.njit
    def user_pipeline(frames, weights, bias, h, c):
        # e.g. the same layer over a sequence of batches, states reused
        total = 0.0
        for k in range(frames.shape[0]):
            h[:, 1:, 1:] = 0
            c[:, 1:, 1:] = 0
            kernel(frames[k], weights, bias, h, c, 0)
            total += h[:, 1:, 1:].sum()
        return total

    x, w, b = make_problem(2, (4, 5), 3, 4, seed=31)
    frames = np.stack([x, -x])
    h = np.zeros((2, 5, 6, 4))
    c = np.zeros_like(h)
    total = user_pipeline(frames, w[0], b[0], h, c)
    expected = 0.0
    for frame in frames:
        for k in range(2):
            expected += naive_scan(frame[k], w[0], b[0])[0].sum()
    assert total == pytest.approx(expected, abs=1e-9)
    h_ref, c_ref = naive_scan(-x[1], w[0], b[0])
    np.testing.assert_allclose(h[1, 1:, 1:], h_ref, atol=1e-10)
    np.testing.assert_allclose(c[1, 1:, 1:], c_ref, atol=1e-10)


BLOCK_NUMBA = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba blocked for this test")
sys.meta_path.insert(0, _Block())
"""


def test_package_works_without_numba(tmp_path):
    script = BLOCK_NUMBA + textwrap.dedent("""
        import warnings
        import numpy as np
        import fastmdlstm
        assert not fastmdlstm.HAVE_NUMBA
        x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
        w, b = fastmdlstm.init_params(2, 3, dtype=np.float64, seed=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h1 = fastmdlstm.forward(x, w, b)          # auto -> python, warns once
            h2 = fastmdlstm.forward(x, w, b)
        assert len(caught) == 1 and "numba" in str(caught[0].message), caught
        h3 = fastmdlstm.forward(x, w, b, backend="python")
        assert (h1 == h2).all() and (h1 == h3).all()
        print(fastmdlstm.choose_backend(x, w).backend)
        try:
            fastmdlstm.forward(x, w, b, backend="numba")
        except ValueError as err:
            assert "backend" in str(err)
        else:
            raise AssertionError("numba backend should be refused")
        np.save(sys.argv[1], h1)
    """)
    out = tmp_path / "h.npy"
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                            text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    w, b = fastmdlstm.init_params(2, 3, dtype=np.float64, seed=1)
    np.testing.assert_allclose(np.load(out), fastmdlstm.forward(x, w, b, backend="numba"),
                               atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_tiles_agree_bitwise_whatever_the_cell_count(dtype):
    """The pre-activation GEMM takes 8x2, 4x2, 1x2 and 1x1 vector tiles and a
    scalar tail depending on the cell count and the gate count; every path must
    give each cell the same bits (bias, then one fma per row in row order)."""
    rng = np.random.default_rng(23)
    n_rows, n_gates = 37, 5 * 19  # 95 gates: vector pairs, a single vector, a scalar tail
    w = rng.standard_normal((2, n_rows, n_gates)).astype(dtype)
    bias = rng.standard_normal((2, n_gates)).astype(dtype)
    rows = rng.standard_normal((16, n_rows)).astype(dtype)
    alone = np.empty((16, n_gates), dtype)
    for m in range(16):  # each cell through the one-cell paths
        one = np.empty((1, n_gates), dtype)
        _kernels._preactivation(rows[m:m + 1], w, bias, 1, one, 1)
        alone[m] = one[0]
    want = bias[1] + rows.astype(np.float64) @ w[1].astype(np.float64)
    np.testing.assert_allclose(alone, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    for m_cnt in (2, 3, 4, 5, 7, 8, 9, 12, 13, 16):
        acc = np.full((16, n_gates), np.nan, dtype)
        _kernels._preactivation(rows, w, bias, 1, acc, m_cnt)
        np.testing.assert_array_equal(acc[:m_cnt], alone[:m_cnt])
        assert np.isnan(acc[m_cnt:]).all()  # nothing written past the cells asked for


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_and_line_counts_compile_to_the_dtype_constants(dtype):
    """lanes_of and line_of replace VEC_BYTES // itemsize (a run-time division in
    compiled code) with constants: the same values as in Python, on views too."""
    lanes_and_line = numba.njit(lambda a: (_kernels.lanes_of(a), _kernels.line_of(a)))
    a = np.zeros((3, 5), dtype)
    want = (_kernels.VEC_BYTES // a.itemsize, 64 // a.itemsize)
    assert lanes_and_line(a) == want
    assert lanes_and_line(a[1, 1:]) == want
    assert (_kernels.lanes_of(a), _kernels.line_of(a)) == want


def _offset_empty(shape, dtype, offset):
    """An empty array whose data start `offset` elements past a 64-byte boundary."""
    size = int(np.prod(shape))
    buf = np.empty(size + 64, dtype)
    skip = (-buf.ctypes.data % 64) // buf.itemsize + offset
    return buf[skip:skip + size].reshape(shape)


@pytest.mark.parametrize("variant", ["slstm", "stable"])
@pytest.mark.parametrize("hidden", [5, 16])
def test_backward_with_kept_gates_is_bitwise_the_same(variant, hidden):
    """The kernels can keep the forward's gate activations (Forward.pre_out)
    and hand them to the backward (run_backward(pre=...)) instead of
    recomputing them: the same bits, either way. hidden=16 makes every cell's
    gates whole aligned vectors, written with non-temporal stores when the
    buffer is aligned: the same values as the plain copy of a misaligned one."""
    from fastmdlstm import _api

    x, weights, bias = make_problem(3, (9, 11), 3, hidden, directions=2, dtype=np.float32)
    w, b, _ = _api._check_params(weights, bias, 2, 3, x.dtype)
    signs = _api.parse_directions(["tl", "br"], 2, count=2)
    sizes = np.array([[9, 11], [4, 11], [9, 2]])
    h = np.empty(x.shape[:-1] + (2 * hidden,), np.float32)
    c = np.empty_like(h)
    kept = {}
    for offset in (0, 1):
        pre = _offset_empty(x.shape[:-1] + (2 * 5 * hidden,), np.float32, offset)
        pre[...] = np.nan
        _api._run_forward_kernel("serial", x, w, b, 2, variant, signs, sizes, True, h, c,
                                 pre=pre)
        kept[offset] = pre
    np.testing.assert_array_equal(kept[0], kept[1])
    grad_h = np.random.default_rng(0).standard_normal(h.shape).astype(np.float32)
    empty = np.empty((0,) * 5, np.float32)

    def run(gates):
        return _kernels.run_backward(
            "batch", x[:, None], w, b, 2, _kernels.VARIANTS[variant], sizes, signs, False,
            empty, empty, h[:, None], c[:, None], grad_h[:, None], empty, 2,
            pre=None if gates is None else gates[:, None])

    for got, want in zip(run(kept[0])[:3], run(None)[:3]):
        np.testing.assert_array_equal(got, want)


@numba.njit
def _vector_tanh_array(x, out):
    lanes = _kernels.VEC_BYTES // x.itemsize
    for r in range(0, x.size - x.size % lanes, lanes):
        _kernels.vstore(out, r, _kernels._vtanh(_kernels.vload(x, r)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_tanh_is_the_scalar_tanh_bitwise(dtype):
    """The backward's cell gradient takes tanh a vector at a time: the same
    bits as the scalar tanh whose accuracy the tests above bound."""
    if numba.config.DISABLE_JIT:
        pytest.skip("unjitted, the scalar tanh is math.tanh")
    if dtype == np.float32:
        x = float32_probe_points()
    else:
        x = np.concatenate([np.linspace(-40, 40, 400_001), [0.0, -0.0, 5e-324, 1e300, -1e300]])
    x = np.concatenate([x, np.array([np.nan, np.inf, -np.inf], dtype)]).astype(dtype)
    x = x[:x.size - x.size % 16]
    got, want = np.empty_like(x), np.empty_like(x)
    _vector_tanh_array(x, got)
    _kernels.activation_array(x, want, False)
    np.testing.assert_array_equal(got, want)


@numba.njit
def _cell_grad_call(act, c_prev, h, c, grad_h, grad_c, msgs_h, msgs_c, at, d, n, variant, tol,
                    da, msg_c):
    return _kernels._cell_grad(act, c_prev, h, c, grad_h, grad_c, msgs_h, msgs_c, at, d, n,
                               variant, tol, da, msg_c)


def _guarded(values, spare=40):
    """values in the front of a NaN-filled buffer: (the C-contiguous view, the buffer)."""
    buf = np.full(values.size + spare, np.nan, values.dtype)
    buf[:values.size] = values.ravel()
    return buf[:values.size].reshape(values.shape), buf


def _cell_grad_units(arrays, d, code, tol, units, absent):
    """_cell_grad on the units `units` of arrays (act, c_prev, h, c, grad_h,
    grad_c, the h and c messages received (d, N)) alone, message part
    `absent` left out, each array before NaN guards that must stay: (bad,
    da (3+d, k), the c messages sent (d, k))."""
    k = len(units)
    views, bufs = zip(*(_guarded(np.ascontiguousarray(a[..., units])) for a in arrays))
    da_view, da_buf = _guarded(np.full((3 + d) * k, np.nan, arrays[0].dtype))
    msg_view, msg_buf = _guarded(np.full(d * k, np.nan, arrays[0].dtype))
    at = tuple(part * k if part < d and part != absent else -1 for part in range(3))
    before = [view.copy() for view in views]
    bad = _cell_grad_call(views[0].ravel(), *views[1:], at, d, k, code, tol, da_view, msg_view)
    for view, buf in zip(views + (da_view, msg_view), bufs + (da_buf, msg_buf)):
        assert np.isnan(buf[view.size:]).all()
    for view, was in zip(views, before):  # inputs only
        np.testing.assert_array_equal(view, was)
    return bad, da_view.reshape(3 + d, k), msg_view.reshape(d, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["slstm", "graves", "halved", "stable"])
def test_cell_grad_on_part_vectors(dtype, variant):
    """The cell gradient runs a vector of units at a time, the last one part
    full when N is not a multiple of the lanes: each unit's result is the
    same bits whether it sits in a whole vector, a part one or alone, agrees
    with the naive formulas, and nothing past the arrays' ends is read into
    the results or written (each array sits before NaN guards). The total
    gradients are the given ones plus the messages received, a part of them
    absent in some cases (a cell on the scan's first row or column)."""
    rng = np.random.default_rng(5)
    code = _kernels.VARIANTS[variant]
    tol = dtype(1e-3 if dtype == np.float32 else 1e-7)
    for d in ([2] if variant == "stable" else [1, 2, 3]):
        n = 21  # 2 whole float32 AVX2 vectors and a part; 1 AVX-512 one and a part
        act = rng.uniform(0.05, 0.95, (3 + d, n))
        c_prev = rng.uniform(-2, 2, (d, n))
        cell = naive_cell(variant, act[0], act[2], list(act[3:]), list(c_prev))
        c = np.clip(cell, -np.finfo(dtype).max, np.finfo(dtype).max)
        h = np.tanh(c * act[1]) if variant == "slstm" else act[1] * np.tanh(c)
        grad_h, grad_c = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        msgs_h, msgs_c = rng.uniform(-1, 1, (d, n)), rng.uniform(-1, 1, (d, n))
        arrays = [a.astype(dtype) for a in (act, c_prev, h, c, grad_h, grad_c, msgs_h, msgs_c)]
        rtol = 2e-5 if dtype == np.float32 else 1e-12
        for absent in (-1, d - 1):  # every message received; the last one absent
            whole = _cell_grad_units(arrays, d, code, tol, list(range(n)), absent)
            assert not whole[0]
            for start, stop in ((0, 1), (3, 8), (5, 21), (20, 21)):
                part = _cell_grad_units(arrays, d, code, tol, list(range(start, stop)), absent)
                for got, want in zip(part[1:], whole[1:]):
                    np.testing.assert_array_equal(got, want[..., start:stop])
            # the naive formulas (float64): dc through h, then the gates
            received = np.arange(d) != absent
            dh = grad_h + msgs_h[received].sum(0)
            dc = grad_c + msgs_c[received].sum(0)
            a = act
            if variant == "slstm":
                dc_total = dc + dh * (1 - h * h) * a[1]
                da_o = dh * (1 - h * h) * c * a[1] * (1 - a[1])
            else:
                t = np.tanh(c)
                dc_total = dc + dh * a[1] * (1 - t * t)
                da_o = dh * t * a[1] * (1 - a[1])
            d_forget, messages = naive_cell_grads(variant, list(a[3:]), list(c_prev), dc_total)
            want = np.vstack([dc_total * a[2] * (1 - a[0] ** 2), da_o,
                              dc_total * a[0] * a[2] * (1 - a[2])] + d_forget)
            np.testing.assert_allclose(whole[1], want, rtol=rtol, atol=rtol)
            np.testing.assert_allclose(whole[2], np.array(messages), rtol=rtol, atol=rtol)
        # a changed c (h, c not from a matching forward) is told
        arrays[3][n - 1] += 1
        assert _cell_grad_units(arrays, d, code, tol, list(range(n)), -1)[0]
