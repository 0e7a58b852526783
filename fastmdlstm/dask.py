"""Batch-chunked forward over dask arrays: threaded, or on a dask.distributed cluster.

Import it explicitly (``import fastmdlstm.dask``); it needs the ``dask`` extra
(``pip install "fastmdlstm[dask]"``). Samples are independent, so the batch
axis is split into tasks, each running :func:`fastmdlstm.forward` on one NumPy
block; the scans need whole images, so nothing else is split.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

try:  # absolute imports: this module's own name does not shadow the dask package
    import dask
    import dask.array as da
    from dask.base import tokenize
except ImportError as exc:  # pragma: no cover - dask is installed wherever tests run
    raise ImportError(
        "fastmdlstm.dask needs dask[array]; install it with "
        "'pip install \"fastmdlstm[dask]\"'") from exc

from . import _api

__all__ = ["forward"]


def forward(x, weights, bias, *, variant="slstm", directions=None, sizes=None,
            backend="auto", out=None, return_cell=False, numba_threads=None):
    """fastmdlstm.forward over a dask array chunked along the batch axis.

    x: dask.array.Array (B, *spatial, C), float32/float64, 1-3 spatial axes.
    weights, bias: NumPy arrays as for fastmdlstm.forward; they are put into
    the graph once (not once per task) and shared by all tasks.
    sizes: None or a NumPy integer array (B, d); it is split to match x's
    batch chunks. variant, directions, backend, return_cell: as for
    fastmdlstm.forward. out is refused (ValueError): results are dask arrays.

    Returns h, a dask array (B, *spatial, Z*N) of x's dtype, or (h, c) with
    return_cell=True. Nothing is computed until .compute() / .persist(); every
    argument is checked now, from shapes and dtypes only, by the same checks
    as fastmdlstm.forward (same exception types and messages).

    Chunking: one task per batch chunk. A scan needs whole images, so x is
    rechunked to a single chunk along every spatial axis and the channel axis
    when it has several (that moves data; chunk x by batch only to avoid it).
    Output chunks: x's batch chunks, one chunk along every other axis. Choose
    batch chunks so that a block (and its output, Z*N channels) fits a worker's
    memory comfortably, and so that there are at least as many chunks as
    worker threads.

    Results are bitwise identical to fastmdlstm.forward on the whole array
    (each sample's arithmetic does not depend on its batch neighbours or the
    thread count), with any scheduler.

    Oversubscription: each task's kernel may open numba's own thread pool, so
    the threads in use are (dask worker threads) x (numba threads per task);
    keep that <= the number of cores, or the wavefront driver's barriers stall.

    - Threaded scheduler (the default for dask arrays; one thread per core):
      pass numba_threads=1 (dask's threads then provide the parallelism; the
      kernels release the GIL), or keep numba's threads and run fewer dask
      threads, e.g. ``.compute(num_workers=1)`` for a few large chunks.
    - dask.distributed: n_workers * threads_per_worker * numba threads
      <= cores per machine, e.g. LocalCluster(n_workers=cores,
      threads_per_worker=1) with numba_threads=1, or set NUMBA_NUM_THREADS in
      the workers' environment.

    numba_threads: None (leave numba's setting alone) or an int >= 1: each task
    runs under numba.set_num_threads(numba_threads) (capped at the worker's
    NUMBA_NUM_THREADS) and restores the previous value afterwards. The setting
    is per calling thread in numba, so it touches only the thread running the
    task. With 1, the serial driver runs: no parallel region is opened, which
    is also what makes concurrent tasks safe under numba's workqueue threading
    layer (not thread-safe; omp and tbb are).

    Workers import fastmdlstm (and compile or load the cached numba kernels)
    on their first task, so fastmdlstm must be installed where they run.
    """
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array, got {type(x).__name__} "
                        "(use fastmdlstm.forward for NumPy arrays)")
    if out is not None:
        raise ValueError("out is not supported by fastmdlstm.dask.forward: the results "
                         "are dask arrays (compute them, or use da.store)")
    if numba_threads is not None and (
            isinstance(numba_threads, (bool, np.bool_))
            or not isinstance(numba_threads, (int, np.integer)) or numba_threads < 1):
        raise ValueError(f"numba_threads must be None or an int >= 1, got {numba_threads!r}")
    if any(np.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError("x has unknown chunk sizes; call x.compute_chunk_sizes() first")
    if isinstance(sizes, da.Array):
        raise TypeError("sizes must be a NumPy integer array (B, d) or None, not a dask "
                        "array (it is checked before the graph is built)")

    if isinstance(directions, Iterator):  # read twice below; a generator only once
        directions = list(directions)

    # The library's own checks, on a zero-sample proxy of x: no data is read
    # or allocated and no kernel runs (an empty batch returns early).
    shape = tuple(int(s) for s in x.shape)
    proxy = np.empty((0,) + shape[1:], dtype=x.dtype)
    _api.forward(proxy, weights, bias, variant=variant, directions=directions,
                 backend=backend, return_cell=return_cell)
    d = proxy.ndim - 2
    batch, spatial = shape[0], shape[1:-1]
    w, b, n = _api._check_params(weights, bias, d, shape[-1], proxy.dtype)
    signs = _api.parse_directions(directions, d, count=w.shape[0])
    # Sign tuples of plain ints: small to pickle, deterministic to tokenize.
    directions = tuple(tuple(s) for s in signs.tolist())
    if sizes is not None:
        sizes, _ = _api._check_sizes(sizes, batch, spatial)
    zn = w.shape[0] * n

    # Whole images per block: a single chunk along every axis but the batch.
    x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})

    # Delayed parameters are single graph keys that every task depends on;
    # plain arrays below 1 MB would be copied into each task instead.
    w_key = dask.delayed(w, pure=True)
    b_key = dask.delayed(b, pure=True)
    kwargs = {"variant": variant, "directions": directions, "backend": backend,
              "return_cell": bool(return_cell), "numba_threads": numba_threads}
    index = tuple(range(x.ndim))
    args = [x, index]
    if sizes is not None:
        # Index x.ndim is a dummy (not in the output) over the single d chunk.
        args += [da.from_array(sizes, chunks=(x.chunks[0], d)), (0, x.ndim)]
    args += [w_key, None, b_key, None]
    token = tokenize(x, w, b, sizes, kwargs)
    meta = np.empty((0,) * x.ndim, dtype=x.dtype)
    result = da.blockwise(
        _forward_block, index, *args, name=f"fastmdlstm-forward-{token}",
        adjust_chunks={x.ndim - 1: zn}, concatenate=True, meta=meta,
        has_sizes=sizes is not None, **kwargs)
    if not return_cell:
        return result
    # The blocks of `result` are (h, c) tuples; these two views pick them out.
    return tuple(
        da.blockwise(operator.getitem, index, result, index, k, None,
                     name=f"fastmdlstm-{part}-{token}", meta=meta)
        for k, part in enumerate(("h", "c")))


def _forward_block(x, *args, has_sizes, numba_threads, **kwargs):
    """One task: fastmdlstm.forward on a NumPy block, under numba_threads."""
    sizes, weights, bias = args if has_sizes else (None, *args)
    if numba_threads is None or not _api.HAVE_NUMBA:
        return _api.forward(x, weights, bias, sizes=sizes, **kwargs)
    numba = _api.numba
    before = numba.get_num_threads()
    # Thread-local in numba: this changes only the thread running this task.
    numba.set_num_threads(min(int(numba_threads), numba.config.NUMBA_NUM_THREADS))
    try:
        return _api.forward(x, weights, bias, sizes=sizes, **kwargs)
    finally:
        numba.set_num_threads(before)
