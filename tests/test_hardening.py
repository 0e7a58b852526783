"""Threads, processes, numerical extremes, memory: nothing crashes, nothing is
silently wrong."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from helpers import make_problem

import fastmdlstm

numba = pytest.importorskip("numba")
ALL_2D = ["tl", "tr", "bl", "br"]


def _problems():
    """One problem per numba driver the dispatcher picks on 2 threads."""
    serial = make_problem(1, (8, 8), 1, 8, dtype=np.float32, seed=1)
    batch = make_problem(4, (16, 16), 2, 8, directions=2, dtype=np.float32, seed=2)
    wave = make_problem(1, (64, 64), 4, 16, dtype=np.float32, seed=3)
    return [(serial, None), (batch, ["tl", "br"]), (wave, None)]


THREAD_SCRIPT = """
import sys, threading
import numpy as np
sys.path.insert(0, {tests!r})
from test_hardening import _problems
import fastmdlstm
problems = _problems()
expected = [fastmdlstm.forward(x, w, b, directions=dirs, backend="numba")
            for (x, w, b), dirs in problems]
failures = []

def worker(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        k = int(rng.integers(len(problems)))
        (x, w, b), dirs = problems[k]
        if not np.array_equal(fastmdlstm.forward(x, w, b, directions=dirs), expected[k]):
            failures.append(k)

threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
import numba
print(numba.threading_layer(), len(failures))
"""


def _layers():
    layers = ["omp", "workqueue"]
    try:
        import tbb  # noqa: F401
        layers.append("tbb")
    except ImportError:
        pass
    return layers


@pytest.mark.parametrize("layer", _layers())
def test_eight_threads_fifty_calls_each(layer):
    """Concurrent calls from 8 Python threads give the serial calls' results,
    under each threading layer (workqueue would abort unguarded)."""
    script = THREAD_SCRIPT.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=600)
    if result.returncode != 0 and "No threading layer could be loaded" in result.stderr:
        pytest.skip(f"threading layer {layer} not available")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [layer, "0"]


def test_threads_in_process():
    problems = _problems()
    expected = [fastmdlstm.forward(x, w, b, directions=d) for (x, w, b), d in problems]
    bad = []

    def worker():
        for k in range(30):
            (x, w, b), d = problems[k % 3]
            if not np.array_equal(fastmdlstm.forward(x, w, b, directions=d), expected[k % 3]):
                bad.append(k)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


FORK_AFTER_USER_PARALLEL = """
import multiprocessing, numba, numpy as np, fastmdlstm

@numba.njit(parallel=True)
def user_kernel(n):  # the user's own parallel numba code starts the thread pool
    s = 0.0
    for i in numba.prange(n):
        s += i
    return s

user_kernel(1000)
x = np.random.default_rng(0).standard_normal((4, 64, 64, 4)).astype(np.float32)
w, b = fastmdlstm.init_params(4, 16, seed=0)
with multiprocessing.get_context("fork").Pool(2) as pool:
    parts = pool.starmap(fastmdlstm.forward, [(x[k:k + 1], w, b) for k in range(4)])
assert np.array_equal(np.concatenate(parts), fastmdlstm.forward(x, w, b))
print(numba.threading_layer())
"""


def test_fork_after_the_users_own_parallel_code():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork not available")
    result = subprocess.run([sys.executable, "-c", FORK_AFTER_USER_PARALLEL],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_moderate_problem_is_not_refused_for_memory():
    x = np.zeros((1000, 64, 1, 1), np.float32)  # width 1: many planes, little state
    w, b = fastmdlstm.init_params(1, 8)
    assert fastmdlstm.forward(x, w, b).shape == (1000, 64, 1, 8)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing(method, threads):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} not available")
    threads(2)
    x, w, b = make_problem(4, (64, 64), 4, 16, dtype=np.float32, seed=5)
    local = fastmdlstm.forward(x, w, b)  # the parent has used the parallel kernels
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        parts = pool.starmap(fastmdlstm.forward, [(x[k:k + 1], w, b) for k in range(4)])
    np.testing.assert_array_equal(np.concatenate(parts), local)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, 1e30, 1e-40])
def test_extreme_inputs_stay_finite(dtype, scale):
    x, w, b = make_problem(2, (12, 9), 3, 4, directions=4, dtype=dtype, seed=7)
    x = (np.sign(x) * dtype(scale)).astype(dtype)  # +-scale (subnormal in float32 for 1e-40)
    h, c = fastmdlstm.forward(x, w, b, directions=ALL_2D, return_cell=True)
    assert np.isfinite(h).all() and np.isfinite(c).all()
    h_py, c_py = fastmdlstm.forward(x, w, b, directions=ALL_2D, return_cell=True,
                                    backend="python")
    np.testing.assert_allclose(h, h_py, atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_state_saturates_instead_of_overflowing(dtype):
    """Forget gates near 1 on both axes double |c| per diagonal: float32
    overflows after ~128 diagonals, float64 after ~1024. c saturates at the
    largest finite value; h stays in [-1, 1]; no NaN appears."""
    n = 2
    w = np.zeros((1 + 2 * n, 5 * n), dtype)
    b = np.zeros(5 * n, dtype)
    b[:n], b[2 * n:3 * n], b[3 * n:] = 1, 30, 30  # g = tanh(1) > 0, i = f = 1
    b[n:n + 1] = -30  # one unit with o ~ 0: tanh(c * o) with c huge must not be NaN
    side = 150 if dtype == np.float32 else 600
    x = np.zeros((1, side, side, 1), dtype)
    h, c = fastmdlstm.forward(x, w, b, return_cell=True)
    big = np.finfo(dtype).max
    assert np.isfinite(c).all() and np.isfinite(h).all()
    assert c[0, -1, -1].max() == big
    # the python reference saturates the same way (unit 0's o ~ 1e-13 makes
    # h = tanh(c * o) ill-conditioned, so compare h on unit 1 only)
    h_py, c_py = fastmdlstm.forward(x[:, :100, :100], w, b, return_cell=True,
                                    backend="python")
    assert np.isfinite(c_py).all() and np.isfinite(h_py).all()
    np.testing.assert_allclose(h[:, :100, :100, 1], h_py[..., 1], atol=1e-6)


def test_long_scan_1024x1024():
    x, w, b = make_problem(1, (1024, 1024), 1, 4, dtype=np.float32, seed=11)
    h, c = fastmdlstm.forward(x, w, b, return_cell=True)
    assert np.isfinite(h).all() and np.isfinite(c).all()
    # one long row against the reference
    h_py = fastmdlstm.forward(x[:, :2, :], w, b, backend="python")
    np.testing.assert_allclose(h[:, :2], h_py, atol=1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs_touch_only_dependent_pixels(bad):
    x, w, b = make_problem(2, (6, 7), 2, 3, directions=4, seed=13)
    clean = fastmdlstm.forward(x, w, b, directions=ALL_2D)
    x[1, 2, 3, 1] = bad
    h = fastmdlstm.forward(x, w, b, directions=ALL_2D)
    np.testing.assert_array_equal(h[0], clean[0])
    rows, cols = np.indices((6, 7))
    for z, (sr, sc) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        independent = ~(((rows - 2) * sr >= 0) & ((cols - 3) * sc >= 0))
        part = slice(3 * z, 3 * z + 3)
        np.testing.assert_array_equal(h[1, ..., part][independent],
                                      clean[1, ..., part][independent])
        assert not np.isinf(h[1, ..., part]).any()


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_resident_memory_flat_over_1000_calls():
    x, w, b = make_problem(4, (16, 16), 2, 8, directions=2, dtype=np.float32, seed=17)
    for _ in range(50):
        fastmdlstm.forward(x, w, b, directions=["tl", "br"], return_cell=True)
    before = _rss()
    for _ in range(1000):
        fastmdlstm.forward(x, w, b, directions=["tl", "br"], return_cell=True)
    assert _rss() - before < 4 * 2**20


def test_request_that_cannot_fit_fails_fast():
    x = np.broadcast_to(np.zeros((1, 1, 1, 1), np.float32), (10**5, 512, 512, 1))
    w, b = fastmdlstm.init_params(1, 8)
    with pytest.raises(MemoryError, match=r"needs \d+ bytes"):
        fastmdlstm.forward(x, w, b)


def test_hypothesis_numba_matches_python():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @st.composite
    def problems(draw):
        d = draw(st.integers(1, 3))
        spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=d, max_size=d)))
        batch = draw(st.integers(0, 3))
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        corners = [tuple(1 - 2 * ((k >> a) & 1) for a in range(d)) for k in range(2 ** d)]
        dirs = draw(st.lists(st.sampled_from(corners), min_size=1, max_size=3))
        ragged = draw(st.booleans())
        sizes = None
        if ragged:
            sizes = np.array([[draw(st.integers(1, s)) for s in spatial]
                              for _ in range(batch)], dtype=np.int64).reshape(batch, d)
        variant = draw(st.sampled_from(["slstm", "graves"]))
        seed = draw(st.integers(0, 2**16))
        return d, spatial, batch, dtype, dirs, sizes, variant, seed

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(problems())
    def check(case):
        d, spatial, batch, dtype, dirs, sizes, variant, seed = case
        x, w, b = make_problem(batch, spatial, 2, 3, directions=len(dirs), dtype=dtype,
                               seed=seed, scale=2.0)
        kw = dict(directions=dirs, sizes=sizes, variant=variant, return_cell=True)
        h, c = fastmdlstm.forward(x, w, b, backend="numba", **kw)
        h_py, c_py = fastmdlstm.forward(x, w, b, backend="python", **kw)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(h, h_py, atol=tol, rtol=0)
        np.testing.assert_allclose(c, c_py, atol=tol * 10, rtol=tol)

    check()


def test_documented_under_no_jit():
    """The kernels' Python logic runs unjitted (NUMBA_DISABLE_JIT=1, used by the
    coverage step): a small problem gives the jitted results."""
    script = textwrap.dedent("""
        import numpy as np, fastmdlstm
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 3, 4, 2))
        w, b = fastmdlstm.init_params(2, 3, directions=2, dtype=np.float64, seed=1)
        h = fastmdlstm.forward(x, w, b, directions=["tl", "br"], backend="numba",
                               sizes=np.array([[3, 4], [2, 3]]))
        np.save(__import__("sys").argv[1], h)
    """)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    w, b = fastmdlstm.init_params(2, 3, directions=2, dtype=np.float64, seed=1)
    want = fastmdlstm.forward(x, w, b, directions=["tl", "br"],
                              sizes=np.array([[3, 4], [2, 3]]))
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "h.npy")
        env = dict(os.environ, NUMBA_DISABLE_JIT="1")
        result = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        np.testing.assert_allclose(np.load(path), want, atol=1e-12)
