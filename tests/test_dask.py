"""fastmdlstm.dask: batch-chunked dask arrays give bitwise the results of
fastmdlstm.forward on the whole NumPy array, threaded and on a LocalCluster."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from helpers import make_problem  # noqa: E402

import fastmdlstm  # noqa: E402
import fastmdlstm.dask as fdask  # noqa: E402

DIRS = ["tl", "br"]
DTYPES = [np.float64, np.float32]


def problem(dtype, spatial=(5, 6), batch=7, chunks=3, seed=0):
    x, w, b = make_problem(batch, spatial, 2, 3, directions=2, dtype=dtype, seed=seed)
    return x, da.from_array(x, chunks=(chunks,) + x.shape[1:]), w, b


def ragged_sizes(batch, spatial, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(1, np.array(spatial) + 1, size=(batch, len(spatial)))


# --- threaded scheduler ------------------------------------------------------
# Threaded tests name their scheduler: once the cluster fixture below has started,
# the default could otherwise be a Client.


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_matches_numpy(dtype):
    x, dx, w, b = problem(dtype)
    h = fdask.forward(dx, w, b, directions=DIRS)
    assert h.dtype == dtype
    assert h.chunks == ((3, 3, 1), (5,), (6,), (6,))
    np.testing.assert_array_equal(h.compute(scheduler="threads"),
                                  fastmdlstm.forward(x, w, b, directions=DIRS))


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_sizes_and_cell(dtype):
    x, dx, w, b = problem(dtype)
    sizes = ragged_sizes(7, (5, 6))
    h, c = fdask.forward(dx, w, b, directions=DIRS, sizes=sizes, return_cell=True,
                         variant="graves")
    assert h.chunks == c.chunks == ((3, 3, 1), (5,), (6,), (6,))
    ref_h, ref_c = fastmdlstm.forward(x, w, b, directions=DIRS, sizes=sizes,
                                      return_cell=True, variant="graves")
    got_h, got_c = dask.compute(h, c, scheduler="threads")
    np.testing.assert_array_equal(got_h, ref_h)
    np.testing.assert_array_equal(got_c, ref_c)


def test_threaded_3d():
    x, dx, w, b = problem(np.float64, spatial=(3, 4, 5), batch=5, chunks=2)
    signs = [(1, 1, 1), (-1, 1, -1)]
    h = fdask.forward(dx, w, b, directions=signs, numba_threads=1)
    np.testing.assert_array_equal(h.compute(scheduler="threads"),
                                  fastmdlstm.forward(x, w, b, directions=signs))


def test_spatial_chunks_are_rechunked():
    x, _, w, b = problem(np.float32)
    dx = da.from_array(x, chunks=(2, 2, 3, 1))
    h = fdask.forward(dx, w, b, directions=iter(DIRS))  # a generator is read once
    assert h.chunks == ((2, 2, 2, 1), (5,), (6,), (6,))
    assert h.numblocks == (4, 1, 1, 1)
    np.testing.assert_array_equal(h.compute(scheduler="threads"),
                                  fastmdlstm.forward(x, w, b, directions=DIRS))


def test_numba_threads_restored():
    numba = pytest.importorskip("numba")
    x, dx, w, b = problem(np.float64)
    before = numba.get_num_threads()
    # The synchronous scheduler runs the tasks in this thread.
    h = fdask.forward(dx, w, b, directions=DIRS, numba_threads=1).compute(
        scheduler="sync")
    assert numba.get_num_threads() == before
    np.testing.assert_array_equal(h, fastmdlstm.forward(x, w, b, directions=DIRS))


def test_parameters_in_graph_once():
    # N=32: weights of 84 kB, which per task (7 chunks) would make a graph > 590 kB.
    x, w, b = make_problem(7, (4, 4), 2, 32)
    h = fdask.forward(da.from_array(x, chunks=1), w, b)
    assert len(pickle.dumps(dict(h.__dask_graph__()))) < 2 * w.nbytes


# --- dask.distributed ---------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    # Worker processes start, import fastmdlstm and load the cached kernels:
    # several seconds on a 2-core machine, so timeouts are generous.
    timeouts = {"distributed.comm.timeouts.connect": "60s",
                "distributed.comm.timeouts.tcp": "60s"}
    with dask.config.set(timeouts), distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None) as cluster, distributed.Client(
            cluster, timeout="60s", set_as_default=False) as client:
        yield client


@pytest.mark.parametrize("dtype", DTYPES)
def test_distributed_matches_local(client, dtype):
    x, dx, w, b = problem(dtype)
    sizes = ragged_sizes(7, (5, 6))
    # 2 workers x 1 thread x 1 numba thread: no oversubscription on 2 cores.
    h = fdask.forward(dx, w, b, directions=DIRS, numba_threads=1)
    hs, cs = fdask.forward(dx, w, b, directions=DIRS, sizes=sizes, return_cell=True,
                           numba_threads=1)
    got = client.gather(client.compute([h, hs, cs]))
    ref_hs, ref_cs = fastmdlstm.forward(x, w, b, directions=DIRS, sizes=sizes,
                                        return_cell=True)
    np.testing.assert_array_equal(got[0], fastmdlstm.forward(x, w, b, directions=DIRS))
    np.testing.assert_array_equal(got[1], ref_hs)
    np.testing.assert_array_equal(got[2], ref_cs)
    with client.as_current():  # the threaded tests' code, unchanged, on the cluster
        np.testing.assert_array_equal(h.compute(), got[0])


# --- bad input ------------------------------------------------------------------


def test_numpy_x_refused():
    x, _, w, b = problem(np.float64)
    with pytest.raises(TypeError, match="x must be a dask"):
        fdask.forward(x, w, b, directions=DIRS)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(out=np.empty((7, 5, 6, 6))), ValueError, "out"),
    (dict(sizes=np.ones((6, 2), dtype=np.int64)), ValueError, "sizes"),
    (dict(sizes=np.ones((7, 3), dtype=np.int64)), ValueError, "sizes"),
    (dict(sizes=np.full((7, 2), 9)), ValueError, "sizes"),
    (dict(sizes=da.ones((7, 2), dtype=np.int64)), TypeError, "sizes"),
    (dict(directions=["tl"]), ValueError, "directions"),
    (dict(variant="lstm"), ValueError, "variant"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(numba_threads=0), ValueError, "numba_threads"),
], ids=["out", "sizes B", "sizes d", "sizes too large", "sizes dask", "directions",
        "variant", "backend", "numba_threads"])
def test_bad_arguments(kwargs, error, match):
    _, dx, w, b = problem(np.float64)
    kwargs = {"directions": DIRS, **kwargs}
    with pytest.raises(error, match=match):
        fdask.forward(dx, w, b, **kwargs)


@pytest.mark.parametrize("make_x, error, match", [
    (lambda dx: dx[..., :1], ValueError, "weights"),
    (lambda dx: dx.astype(np.int32), TypeError, "x"),
    (lambda dx: dx[:, 0, 0], ValueError, "x"),
], ids=["channel mismatch", "x int", "x ndim 2"])
def test_bad_x(make_x, error, match):
    _, dx, w, b = problem(np.float64)
    with pytest.raises(error, match=match):
        fdask.forward(make_x(dx), w, b, directions=DIRS)


def test_unknown_chunks_refused():
    _, dx, w, b = problem(np.float64)
    dx = dx[dx[:, 0, 0, 0] > -np.inf]  # boolean indexing: chunk sizes unknown
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        fdask.forward(dx, w, b, directions=DIRS)


def test_import_error_without_dask():
    code = ("import sys; sys.modules['dask'] = None\n"
            "try:\n    import fastmdlstm.dask\n"
            "except ImportError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "fastmdlstm[dask]" in done.stdout
