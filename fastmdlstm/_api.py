"""Public functions: argument checks, layout canonicalisation and dispatch.

Every check runs before anything is written, so a call that raises leaves the
caller's buffers untouched.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
import numpy.typing as npt

from . import _dispatch, _reference
from ._cells import VARIANTS, check_variant  # noqa: F401  (VARIANTS: re-exported)

try:  # the package must work (python backend) where numba cannot be imported
    import numba

    from . import _kernels
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _kernels = None
    numba = None
    HAVE_NUMBA = False

__all__ = ["forward", "forward_inplace", "init_params", "choose_backend",
           "parse_directions", "HAVE_NUMBA"]

BACKENDS = ("auto", "numba", "python")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DIRECTION_NAMES = {"tl": (1, 1), "tr": (1, -1), "bl": (-1, 1), "br": (-1, -1)}
_warned_no_numba = False

# Types of the public API (Python 3.9: typing's Union, not "|", outside annotations).
FloatArray = npt.NDArray[np.floating]
#: directions: a name ("tl"), a sign tuple ((1, -1)), or a sequence of them.
Direction = Union[str, Sequence[int]]
Directions = Union[Direction, Sequence[Direction]]
#: an array, or its shape as a tuple of ints (choose_backend).
ArrayOrShape = Union[npt.NDArray, Sequence[int]]
Params = tuple[FloatArray, FloatArray]


# --- where a parallel kernel may run ---------------------------------------------
# Numba's workqueue threading layer is not thread-safe: concurrent parallel
# calls abort the process. GNU OpenMP (the omp layer) is not fork-safe: a forked
# child of a process that has used it is killed on its first parallel call. So
# parallel drivers run under a lock unless the layer is known to be
# thread-safe, and in a forked child whose parent had started omp (by any
# numba code, not only ours) the serial driver runs (bitwise the same results).
_parallel_lock = threading.Lock()
_fork_state = {"forked_after_omp": False}


def _current_layer():
    """The threading layer this process has started, or None before any."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _before_fork():
    _fork_state["omp_at_fork"] = HAVE_NUMBA and _current_layer() == "omp"


def _after_fork_in_child():
    global _parallel_lock
    _parallel_lock = threading.Lock()  # a lock held by another thread at fork stays held
    _fork_state["forked_after_omp"] |= _fork_state.get("omp_at_fork", False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _launch(driver, *args, run=None):
    """Run a numba driver under the rules above: run(driver, *args), by default
    the driver itself on args (the backward passes its own runner)."""
    if run is None:
        def run(name, *rest):
            return _kernels.DRIVERS[name](*rest)
    if driver != "serial":
        layer = _current_layer()
        if _fork_state["forked_after_omp"]:
            driver = "serial"
        elif layer in ("omp", "tbb"):
            return run(driver, *args)
        else:  # workqueue, or not started yet (the first call picks the layer)
            with _parallel_lock:
                return run(driver, *args)
    return run(driver, *args)


# --- argument checks ---------------------------------------------------------


def _plain_array(value, name):
    """value itself if it is a numpy.ndarray whose subclass (if any) behaves as
    one: numpy.memmap is accepted (a file's pages), other subclasses are refused
    (a masked array's mask or a matrix's 2-D rules would silently be ignored)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if type(value) is not np.ndarray and not isinstance(value, np.memmap):
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        hint = (f"{name}.filled(...) or numpy.asarray({name})"
                if isinstance(value, np.ma.MaskedArray) else f"numpy.asarray({name})")
        raise TypeError(f"{name} must be a plain numpy.ndarray, not a subclass ({kind}); "
                        f"pass {hint} to use its data as they are")
    return value


def _is_float(dtype):
    """float32 or float64 in any byte order."""
    return dtype.kind == "f" and dtype.itemsize in (4, 8)


def _as_float_array(value, name):
    value = _plain_array(value, name)
    if value.dtype not in FLOAT_DTYPES:
        if _is_float(value.dtype):  # non-native byte order: the kernels read it as is
            raise TypeError(f"{name} has non-native byte order ({value.dtype.str}); convert "
                            f"it with {name}.astype({value.dtype.newbyteorder('=').name})")
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    return value


def _check_choice(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _check_x(x):
    x = _as_float_array(x, "x")
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"x must have shape (B, *spatial, C) with 1 to 3 spatial axes, "
            f"got ndim={x.ndim}")
    return x, x.ndim - 2


def _check_params(weights, bias, d, channels, dtype):
    """weights (Z, C + d*N, (3+d)*N) and bias (Z, (3+d)*N), cast to dtype."""
    for name, value in (("weights", weights), ("bias", bias)):
        _plain_array(value, name)
        if not _is_float(value.dtype):  # any byte order: cast below like the other float
            raise TypeError(f"{name} must have a float32 or float64 dtype, got {value.dtype}")
    if weights.ndim == 2:
        weights = weights[None]
    if weights.ndim != 3:
        raise ValueError(f"weights must be 2-D or 3-D (Z, C + {d}*N, {3 + d}*N), "
                         f"got ndim={weights.ndim}")
    z, rows, gates = weights.shape
    if gates == 0 or gates % (3 + d):
        raise ValueError(f"weights has {gates} columns; a {d}-D cell needs "
                         f"{3 + d}*N (gate blocks g, o, i and {d} forget gates)")
    n = gates // (3 + d)
    if rows != channels + d * n:
        raise ValueError(f"weights has {rows} rows; x has {channels} channels and N={n}, "
                         f"so a {d}-D cell needs C + {d}*N = {channels + d * n} rows")
    if bias.ndim == 1 and z == 1:
        bias = bias[None]
    if bias.shape != (z, gates):
        raise ValueError(f"bias must have shape ({z}, {gates}) to match weights "
                         f"{weights.shape}, got {bias.shape}")
    # Parameters are small: a C-contiguous, 64-byte aligned copy in x's dtype is cheap.
    return _aligned(weights, dtype), np.ascontiguousarray(bias, dtype=dtype), n


def _aligned(a, dtype):
    """a as a C-contiguous array of dtype starting on a 64-byte boundary (a
    itself when it is one): the kernels load weights a cache line at a time,
    and a line-crossing load costs two. Small arrays are not worth a copy
    (nor the ~1 us that reading an address costs)."""
    if a.dtype == dtype and a.flags.c_contiguous and (
            a.nbytes < 16384 or a.ctypes.data % 64 == 0):
        return a
    out = _kernels._aligned_zeros(a.shape, dtype)
    out[...] = a
    return out


def parse_directions(directions: Directions | None, d: int,
                     count: int | None = None) -> npt.NDArray[np.int64]:
    """Sign tuples (Z, d) for directions given as names or sign tuples.

    None means one scan from the origin corner. With count, the number of
    directions must equal it. Raises TypeError or ValueError naming directions.
    """
    try:  # the common spellings are parsed once (a forward call is ~20 us at B=1);
        # the key keeps each sign's type so that True or 1.0 never hit the entry of 1
        key = None if directions is None else tuple(
            e if isinstance(e, str) else tuple((type(v), v) for v in e) for e in (
                [directions] if isinstance(directions, str) else directions))
        hash(key)
    except TypeError:
        return _parse_directions(directions, d, count)
    return _parse_directions_cached(key, d, count)


@functools.lru_cache(maxsize=256)
def _parse_directions_cached(key, d, count):
    entries = None if key is None else [
        e if isinstance(e, str) else tuple(v for _, v in e) for e in key]
    signs = _parse_directions(entries, d, count)
    signs.flags.writeable = False
    return signs


def _parse_directions(directions, d, count):
    if directions is None:
        directions = [(1,) * d]
    elif isinstance(directions, str) or (
            isinstance(directions, tuple) and directions
            and all(isinstance(s, (int, np.integer)) for s in directions)):
        directions = [directions]  # one direction given on its own
    try:
        entries = list(directions)
    except TypeError:
        raise TypeError("directions must be a sequence of names or sign tuples, "
                        f"got {type(directions).__name__}") from None
    signs = []
    for entry in entries:
        if isinstance(entry, str):
            if d != 2 or entry not in DIRECTION_NAMES:
                names = tuple(DIRECTION_NAMES) if d == 2 else "none"
                raise ValueError(f"directions: unknown direction {entry!r} for a "
                                 f"{d}-D input (names: {names}; or sign tuples)")
            signs.append(DIRECTION_NAMES[entry])
            continue
        try:
            sign = tuple(entry)
        except TypeError:
            raise TypeError(f"directions: each entry must be a name or a tuple of "
                            f"+1/-1, got {entry!r}") from None
        if len(sign) != d or any(
                isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer))
                or s not in (1, -1) for s in sign):
            raise ValueError(f"directions: {entry!r} is not a tuple of {d} entries "
                             "each +1 or -1")
        signs.append(tuple(int(s) for s in sign))
    if not signs:
        raise ValueError("directions must name at least one direction")
    if count is not None and len(signs) != count:
        raise ValueError(f"directions has {len(signs)} entries but weights holds "
                         f"Z={count} directions")
    return np.array(signs, dtype=np.int64).reshape(len(signs), d)


@functools.lru_cache(maxsize=64)
def _full_sizes(batch, spatial):
    sizes = np.tile(np.array(spatial, dtype=np.int64).reshape(1, -1), (batch, 1))
    sizes.flags.writeable = False
    return sizes


def _check_sizes(sizes, batch, spatial):
    d = len(spatial)
    if sizes is None:
        return _full_sizes(batch, spatial), False
    if isinstance(sizes, np.ndarray):
        _plain_array(sizes, "sizes")
    else:
        try:
            sizes = np.asarray(sizes)
        except Exception:
            raise TypeError("sizes must be an integer array of shape (B, d)") from None
    if sizes.dtype == np.bool_ or not np.issubdtype(sizes.dtype, np.integer):
        if not (sizes.size == 0 and sizes.dtype == np.float64):  # np.asarray([])
            raise TypeError(f"sizes must be an integer array, got dtype {sizes.dtype}")
    if sizes.shape != (batch, d):
        raise ValueError(f"sizes must have shape (B, d) = ({batch}, {d}), got {sizes.shape}")
    sizes = sizes.astype(np.int64)
    if (sizes < 1).any():
        raise ValueError("sizes must be >= 1 along every axis")
    if (sizes > np.array(spatial, dtype=np.int64)).any():
        raise ValueError(f"sizes must not exceed the padded spatial shape {tuple(spatial)}")
    return sizes, bool((sizes != np.array(spatial)).any())


def _available_memory():
    """Bytes the OS can still hand out (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Requests below this are not checked: reading /proc/meminfo costs more than a
# small forward (tens of microseconds).
MEMORY_CHECK_MIN_BYTES = 64 * 2**20


def _free_memory():
    """Bytes of unused RAM (Linux MemFree, at most MemAvailable plus the
    kernel's small reserve), or 0 if unknown: a system call, where reading
    /proc/meminfo took ~0.15 ms after a backward had streamed the caches."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def _check_memory(nbytes, what):
    """Fail before allocating when a request cannot fit (instead of an OOM kill
    later, when lazily committed pages are touched)."""
    if nbytes < MEMORY_CHECK_MIN_BYTES or 2 * nbytes <= _free_memory():
        return
    available = _available_memory()
    if available is not None and nbytes > available:
        raise MemoryError(f"{what} needs {nbytes} bytes ({nbytes / 2**30:.2f} GiB) but only "
                          f"{available} bytes ({available / 2**30:.2f} GiB) are available")


def _check_buffer(buf, name, shape, dtype, others):
    _plain_array(buf, name)
    if buf.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (that of x), got {buf.dtype}")
    if buf.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {buf.shape}")
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if _self_overlaps(buf):
        raise ValueError(f"{name} overlaps itself: its strides {buf.strides} map several "
                         "elements to the same memory (a broadcast or as_strided view); "
                         f"pass a buffer with one element per address, e.g. {name}.copy()")
    for other_name, other in others:
        if _overlaps(buf, other):
            raise ValueError(f"{name} must not share memory with {other_name}")
    return buf


# Above this many elements a buffer that fails the quick test below is refused
# instead of listing its addresses (8 bytes each).
SELF_OVERLAP_EXACT_MAX = 2**22


def _self_overlaps(a):
    """Whether two elements of a share memory. Quick: contiguous arrays never do,
    a zero stride on an axis of extent > 1 always does, and strides that nest
    (sorted by size, each at least the extent of the axes below it) never do.
    Otherwise the element addresses are listed and compared (up to
    SELF_OVERLAP_EXACT_MAX elements; larger ones are assumed to overlap)."""
    if a.size <= 1 or a.flags.c_contiguous or a.flags.f_contiguous:
        return False
    axes = sorted((abs(st), n) for st, n in zip(a.strides, a.shape) if n > 1)
    if axes[0][0] == 0:
        return True
    reach = a.itemsize  # bytes spanned by one element, then by the axes so far
    for stride, n in axes:
        if stride < reach:
            break
        reach += stride * (n - 1)
    else:
        return False
    if a.size > SELF_OVERLAP_EXACT_MAX:
        return True
    offsets = np.zeros((), np.int64)
    for stride, n in axes:
        offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * stride)
    offsets = np.sort(offsets, axis=None)
    return bool((np.diff(offsets) < a.itemsize).any())


def _overlaps(a, b):
    """Whether a and b share memory (interleaved views that don't are fine);
    when deciding exactly is too costly, assume they do."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**5))
    except Exception:  # numpy's TooHardError
        return True


def _threads():
    return numba.get_num_threads() if HAVE_NUMBA else 1


def _resolve_backend(backend, macs_args, explain=False, threads=None):
    """(backend, driver), or a Choice with its reason when explain."""
    global _warned_no_numba
    _check_choice(backend, "backend", BACKENDS)
    if backend == "python":
        choice = _dispatch.Choice("python", "reference", "requested")
        return choice if explain else choice[:2]
    if backend == "numba" and not HAVE_NUMBA:
        raise ValueError("backend='numba' was requested but numba cannot be imported")
    if not HAVE_NUMBA and not _warned_no_numba:
        _warned_no_numba = True
        warnings.warn("fastmdlstm: numba cannot be imported; backend='auto' uses the "
                      "pure-Python fallback (slow)", RuntimeWarning, stacklevel=3)
    args = (*macs_args, _threads() if threads is None else threads, HAVE_NUMBA)
    if not explain:
        return _dispatch.pick(*args)
    choice = _dispatch.choose(*args)
    if backend == "numba":
        choice = choice._replace(reason="requested; " + choice.reason)
    return choice


def _canonical(a, d):
    """View with leading singleton spatial axes: (B, *S, K) -> (B, S0, S1, S2, K)."""
    return a[(slice(None),) + (None,) * (3 - d)]


# --- public API -----------------------------------------------------------------


def _shape_arg(value, name, lengths):
    """The shape of value (an array, anything with .shape, or a sequence of ints)
    as a tuple of non-negative ints of one of the given lengths."""
    shape = value.shape if hasattr(value, "shape") else value
    try:
        entries = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be an array or a shape tuple, "
                        f"got {type(value).__name__}") from None
    if isinstance(shape, (str, bytes)) or any(
            isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
            or v < 0 for v in entries):
        raise ValueError(f"{name}: a shape must hold integers >= 0, got {shape!r}")
    if len(entries) not in lengths:
        raise ValueError(f"{name}: shape {entries} must have "
                         f"{' or '.join(map(str, lengths))} entries")
    return tuple(int(v) for v in entries)


def choose_backend(x: ArrayOrShape, weights: ArrayOrShape, *,
                   directions: Directions | None = None,
                   backend: str = "auto") -> _dispatch.Choice:
    """What ``forward(x, weights, bias, ...)`` would run, and why.

    Parameters
    ----------
    x : ndarray or tuple of int
        The input, or its shape (B, *spatial, C) with 1 to 3 spatial axes.
    weights : ndarray or tuple of int
        The weights, or their shape (Z, C + d*N, (3+d)*N) or (C + d*N, (3+d)*N).
    directions : optional
        As for `forward`; its count must match Z.
    backend : {"auto", "numba", "python"}
        As for `forward`.

    Returns
    -------
    Choice
        A named tuple (backend, driver, reason): backend "numba" or "python",
        driver "serial", "batch", "wavefront" (numba) or "reference" (python),
        and the condition that decided it.

    Raises
    ------
    TypeError
        x or weights is neither an array nor a sequence.
    ValueError
        A shape holds negative or non-integer entries or does not fit a d-D
        cell (the message names x or weights), bad directions or backend.
    """
    shape = _shape_arg(x, "x", (3, 4, 5))
    d = len(shape) - 2
    w_shape = _shape_arg(weights, "weights", (2, 3))
    z = 1 if len(w_shape) == 2 else w_shape[0]
    rows, gates = w_shape[-2:]
    if z == 0 or gates == 0 or gates % (3 + d):
        raise ValueError(f"weights: shape {w_shape} does not fit a {d}-D cell: it needs "
                         f"Z >= 1 and {3 + d}*N columns with N >= 1")
    n = gates // (3 + d)
    if rows != shape[-1] + d * n:
        raise ValueError(f"weights: shape {w_shape} has {rows} rows; x has {shape[-1]} "
                         f"channels and N={n}, so a {d}-D cell needs {shape[-1] + d * n}")
    if directions is not None:
        parse_directions(directions, d, count=z)
    return _resolve_backend(backend, (shape[0], shape[1:-1], shape[-1], n, z), explain=True)


def forward(x: FloatArray, weights: FloatArray, bias: FloatArray, *,
            variant: str = "slstm", directions: Directions | None = None,
            sizes: npt.ArrayLike | None = None, backend: str = "auto",
            out: FloatArray | None = None, return_cell: bool = False,
            return_gates: bool = False) -> FloatArray | tuple[FloatArray, ...]:
    """Multi-dimensional LSTM forward over a batch, all directions.

    Parameters
    ----------
    x : ndarray, shape (B, *spatial, C)
        float32 or float64, 1 to 3 spatial axes (d = x.ndim - 2), any strides.
        The computation runs in x's dtype.
    weights : ndarray, shape (Z, C + d*N, (3+d)*N), or (C + d*N, (3+d)*N) for Z = 1
        Per direction: rows for the C input channels, then N rows per spatial
        axis (applied to h from the previous position along that axis); column
        blocks (N wide) g, o, i, f_axis0, ..., f_axis(d-1). float32/float64 in
        any byte order; cast to x's dtype (a small copy) when it differs.
    bias : ndarray, shape (Z, (3+d)*N), or ((3+d)*N,) for Z = 1
        Float, cast like weights.
    variant : {"slstm", "graves", "halved", "stable"}
        h = tanh(c * o) ("slstm", Theis & Bethge) or h = o * tanh(c) ("graves");
        "halved" averages the d forget terms, "stable" (2-D only) mixes the two
        predecessors' cells with a gate lam (fastmdlstm/_cells.py, README "The math").
    directions : str, tuple of int, or a sequence of them, optional
        The corner each of the Z scans starts from, one per weights[z]: names
        "tl", "tr", "bl", "br" (2-D only) or sign tuples of d entries +1/-1
        (+1 scans forward along that axis). Default: one scan from the origin
        corner, (1,) * d. The count must equal Z.
    sizes : array of int, shape (B, d), optional
        Each sample's valid extent at the origin corner of the padded batch,
        1 <= sizes[b, k] <= spatial[k]. Outside it h and c are exactly 0 and x
        is not read. Default: every sample fills the batch's spatial shape.
    backend : {"auto", "numba", "python"}
        "numba": the compiled kernels; "python": the NumPy reference; "auto":
        the dispatcher's choice (see `choose_backend`).
    out : ndarray, shape (B, *spatial, Z*N), optional
        A writeable buffer of x's dtype to fill and return (never cast). It must
        not share memory with x, weights or bias, nor overlap itself.
    return_cell : bool
        Also return the cell states c.
    return_gates : bool
        Also return the gates' activations, for training: `backward` given
        them (``gates=``) skips recomputing them. The result is then
        (h, c, gates) whatever return_cell says (the backward needs c too).

    Returns
    -------
    h : ndarray, shape (B, *spatial, Z*N)
        Hidden states of x's dtype; direction z in channels [z*N, (z+1)*N).
        `out` itself when given.
    (h, c) : tuple of ndarray
        When return_cell is True (and return_gates False); c has h's shape
        and layout.
    (h, c, gates) : tuple of ndarray
        When return_gates is True. gates has shape (B, *spatial, Z*(3+d)*N)
        and x's dtype: each cell's gate activations, tanh of the candidate
        block and the logistic function of the others, applied to the
        pre-activations ``[x | h_prev...] @ W + b``; direction z in columns
        [z*G, (z+1)*G) (G = (3+d)*N) in the weights' gate-column order (g,
        o, i, then the forget gates, or "stable"'s f and lam); exactly 0
        outside each sample's valid region.

    Raises
    ------
    TypeError
        An argument has the wrong type or dtype: not a numpy.ndarray, a numpy
        subclass other than numpy.memmap (masked array, matrix), an integer,
        float16 or complex dtype, out of another dtype than x, non-integer sizes.
    ValueError
        Wrong shapes or ndim, unknown variant, backend or direction, a
        direction count other than Z, sizes out of range, out read-only or
        overlapping x, the parameters or itself. Messages name the argument.
    MemoryError
        The call needs more memory than is available (raised before allocating).

    Every check runs before anything is written: a call that raises leaves
    out untouched.
    """
    x, d = _check_x(x)
    check_variant(variant, d)
    if not isinstance(return_cell, (bool, np.bool_)):
        raise TypeError("return_cell must be a bool")
    if not isinstance(return_gates, (bool, np.bool_)):
        raise TypeError("return_gates must be a bool")
    return_cell = bool(return_cell or return_gates)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    w, b, n = _check_params(weights, bias, d, channels, x.dtype)
    z = w.shape[0]
    signs = parse_directions(directions, d, count=z)
    sizes, ragged = _check_sizes(sizes, batch, spatial)
    out_shape = (batch,) + spatial + (z * n,)
    if out is not None:
        # The caller's parameters, not w and b: those may be aligned copies.
        _check_buffer(out, "out", out_shape, x.dtype,
                      [("x", x), ("weights", weights), ("bias", bias)])
    threads = _threads()  # ~2 us a query: once per call
    chosen, driver = _resolve_backend(backend, (batch, spatial, channels, n, z),
                                      threads=threads)
    out_bytes = math.prod(out_shape) * x.dtype.itemsize
    gates_shape = out_shape[:-1] + (z * w.shape[2],)
    gates_bytes = return_gates * math.prod(gates_shape) * x.dtype.itemsize
    # What this call allocates: h (unless out is given), c if asked for, and
    # the kernels' state (rolling rows or planes; whole padded states for python).
    item = x.dtype.itemsize
    if chosen == "numba":  # rolling h and c per (sample, direction) in flight
        s0, s1, s2 = (1,) * (3 - d) + spatial
        in_flight = batch * z if driver == "wavefront" else min(batch * z, threads)
        if driver == "wavefront" and s0 > 1:  # two planes
            state = 2 * 2 * s0 * s1 * n * item * in_flight
        else:  # a ring of rows (_dispatch.ring_rows)
            rows = _dispatch.ring_rows(s0, s1, _kernels.DEFAULT_GROUP)
            state = 2 * rows * s2 * n * item * in_flight
    else:  # padded h and c of the whole batch for one direction, and a copy of x
        state = 2 * batch * math.prod(s + 1 for s in spatial) * n * item + x.nbytes
    _check_memory((out is None) * out_bytes + return_cell * out_bytes + gates_bytes + state,
                  "forward of x with shape " + str(x.shape))
    if out is None:
        out = np.empty(out_shape, dtype=x.dtype)
    cell = np.empty(out_shape, dtype=x.dtype) if return_cell else None
    # Aligned: whole-vector gate blocks are then streamed out (non-temporal stores);
    # zeros cost nothing extra here (fresh pages come zeroed).
    gates = _kernels._aligned_zeros(gates_shape, x.dtype) if return_gates else None
    if out.size:
        if chosen == "python":
            _reference.forward(x, w, b, variant, signs, sizes, out, cell, gates)
        else:
            _run_forward_kernel(driver, x, w, b, d, variant, signs,
                                sizes, ragged, out, cell, threads=threads, pre=gates)
    if return_gates:
        return out, cell, gates
    return (out, cell) if return_cell else out


def _zero_outside(buf, sizes, spatial):
    """Exact zeros outside each sample's valid region (the kernels skip it)."""
    for bi, size in enumerate(sizes):
        if tuple(size) == tuple(spatial):
            continue
        for k, s in enumerate(size):
            region = (bi,) + tuple(slice(0, int(v)) for v in size[:k]) + (slice(int(s), None),)
            buf[region] = 0


def _run_forward_kernel(driver, x, w, b, d, variant, signs, sizes, ragged, out, cell,
                        group=None, threads=None, pre=None):
    """Run one numba driver; group (cells per weight pass) is for tests/benchmarks;
    pre (B, *S, Z*(3+d)*N) receives the gates' activations when given (the
    kernels' pre_out: what forward(..., return_gates=True) returns)."""
    empty = np.empty((0,) * 5, dtype=x.dtype)
    problem = _kernels.Forward(
        _canonical(x, d), w, b, d, w.shape[2] // (3 + d), _kernels.VARIANTS[variant], sizes,
        signs, False, empty, empty, _canonical(out, d),
        empty if cell is None else _canonical(cell, d),
        empty if pre is None else _canonical(pre, d))
    _launch(driver, problem, _kernels.DEFAULT_GROUP if group is None else group,
            _threads() if threads is None else threads)
    if ragged:  # after the kernel: a failed launch must leave out untouched
        _zero_outside(out, sizes, x.shape[1:-1])
        if cell is not None:
            _zero_outside(cell, sizes, x.shape[1:-1])
        if pre is not None:
            _zero_outside(pre, sizes, x.shape[1:-1])


def forward_inplace(x: FloatArray, weights: FloatArray, bias: FloatArray,
                    h: FloatArray, c: FloatArray, *, variant: str = "slstm",
                    backend: str = "auto") -> None:
    """One scan from the origin corner, in place over preallocated states.

    Allocates nothing that grows with the image: reuse h and c across calls.

    Parameters
    ----------
    x : ndarray, shape (B, *S, C)
        float32 or float64, 1 to 3 spatial axes S (d = len(S)), any strides.
    weights : ndarray, shape (C + d*N, (3+d)*N) or (1, C + d*N, (3+d)*N)
        One direction's weights (layout as in `forward`); cast to x's dtype.
    bias : ndarray, shape ((3+d)*N,) or (1, (3+d)*N)
        Cast to x's dtype.
    h, c : ndarray, shape (B, *(S + 1), N)
        Writeable state tensors of x's dtype. Index 0 along each spatial axis
        holds the boundary states (only read); the rest is written: in 2-D
        h[:, 1:, 1:] and c[:, 1:, 1:]. They must not share memory with x, the
        parameters or each other, nor overlap themselves (interleaved views
        such as buf[..., ::2] and buf[..., 1::2] are fine).
    variant : {"slstm", "graves", "halved", "stable"}
        As in `forward`.
    backend : {"auto", "numba", "python"}
        As in `forward`.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        As in `forward` (for x, weights, bias, h and c).
    ValueError
        Wrong shapes, weights of more than one direction, unknown variant or
        backend, h or c read-only or overlapping another argument or itself.

    Every check runs before anything is written.
    """
    x, d = _check_x(x)
    check_variant(variant, d)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    w, b, n = _check_params(weights, bias, d, channels, x.dtype)
    if w.shape[0] != 1:
        raise ValueError(f"weights must hold one direction for forward_inplace, "
                         f"got Z={w.shape[0]}")
    state_shape = (batch,) + tuple(s + 1 for s in spatial) + (n,)
    params = [("weights", weights), ("bias", bias)]  # the caller's, not copies
    _check_buffer(h, "h", state_shape, x.dtype, [("x", x)] + params)
    _check_buffer(c, "c", state_shape, x.dtype, [("x", x), ("h", h)] + params)
    chosen, driver = _resolve_backend(backend, (batch, spatial, channels, n, 1))
    if batch == 0 or 0 in spatial:
        return None
    if chosen == "python":
        _reference.scan_padded(x, w[0], b[0], h, c, variant)
        return None
    empty = np.empty((0,) * 5, dtype=x.dtype)
    problem = _kernels.Forward(
        _canonical(x, d), w, b, d, n, _kernels.VARIANTS[variant], _full_sizes(batch, spatial),
        parse_directions(None, d), True, _canonical(h, d), _canonical(c, d), empty, empty,
        empty)
    _launch(driver, problem, _kernels.DEFAULT_GROUP, numba.get_num_threads())
    return None


def init_params(input_size: int, hidden_size: int, *,
                directions: int | Directions = 1, dtype: npt.DTypeLike = np.float32,
                seed: int | np.random.SeedSequence | None = None,
                ndim: int = 2, variant: str = "slstm") -> Params:
    """Weights and bias for a fresh layer.

    Weights ~ U(-1/sqrt(N), 1/sqrt(N)) (the PyTorch LSTM convention). Biases
    are zero except the forget gates': 1 for d = 1 (the usual LSTM choice), and
    -log(d - 1) for d >= 2, so that the d forget gates start at 1/d each and sum
    to 1. (With +1 each, two summed gates of 0.73 would grow |c| like
    1.46^(H+W): float32 overflows on a 128x128 image.) The "halved" and
    "stable" cells average their predecessors' cells, so their forget gates
    start at sigma(1) = 0.73 (bias 1) and "stable"'s lam gate at 0.5.

    Parameters
    ----------
    input_size : int
        C, the input channels (>= 1).
    hidden_size : int
        N, the hidden units per direction (>= 1).
    directions : int or directions
        Z as a count, or the directions themselves (only their count is used;
        validated for ndim).
    dtype : float32 or float64
    seed : optional
        Anything numpy.random.default_rng accepts; the same seed gives the same
        parameters.
    ndim : {1, 2, 3}
        d, the number of spatial axes.
    variant : {"slstm", "graves", "halved", "stable"}
        The cell the parameters are for (only the forget-gate biases differ).

    Returns
    -------
    weights : ndarray, shape (Z, C + d*N, (3+d)*N)
    bias : ndarray, shape (Z, (3+d)*N)

    Raises
    ------
    TypeError
        input_size or hidden_size not an int, dtype not float32/float64.
    ValueError
        A size < 1, ndim not 1-3, bad directions, a variant unknown or not
        defined for ndim.
    MemoryError
        The parameters would not fit in the available memory (raised before
        allocating).
    """
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if isinstance(ndim, (bool, np.bool_)) or not isinstance(ndim, (int, np.integer)) \
            or not 1 <= ndim <= 3:
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    check_variant(variant, ndim)
    if isinstance(directions, (int, np.integer)) and not isinstance(directions, bool):
        if directions < 1:
            raise ValueError(f"directions must be >= 1, got {directions}")
        z = int(directions)
    else:
        z = len(parse_directions(directions, ndim))
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    n, d = int(hidden_size), int(ndim)
    count = z * (int(input_size) + d * n) * (3 + d) * n
    # float64 draws, then the cast (before anything is allocated: not an OOM kill later)
    _check_memory(count * (8 + dtype.itemsize), f"init_params for {count} weights")
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(n)
    weights = rng.uniform(-bound, bound, size=(z, input_size + d * n, (3 + d) * n))
    bias = np.zeros((z, (3 + d) * n))
    if variant in ("halved", "stable"):
        bias[:, 3 * n:4 * n] = 1.0  # (stable: f; lam's bias 0 mixes evenly)
        if variant == "halved":
            bias[:, 3 * n:] = 1.0
    else:
        bias[:, 3 * n:] = 1.0 if d == 1 else -np.log(d - 1.0)
    return weights.astype(dtype), bias.astype(dtype)
