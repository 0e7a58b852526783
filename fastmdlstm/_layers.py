"""Layer objects: parameters plus configuration, saved to one .npz file."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile

import numpy as np
import numpy.typing as npt

from . import _backward
from ._api import (
    FLOAT_DTYPES,
    VARIANTS,
    Directions,
    FloatArray,
    _check_memory,
    _is_float,
    _plain_array,
    check_variant,
    forward,
    init_params,
    parse_directions,
)

FORMAT_VERSION = 1

# Limits on what a model file may claim, checked before reading its arrays.
MAX_SIZE = 2**24        # input_size, hidden_size
MAX_DIRECTIONS = 64     # Z
MAX_META_BYTES = 2**16  # the JSON metadata member
MEMBERS = ("meta", "weights", "bias")


class _ModelFileError(ValueError):
    """A problem with a model file's content, already described with its name."""


def _resolve_ndim(cls, ndim, directions):
    """d from the class, else the argument, else the directions (names: 2-D)."""
    if ndim is None:
        ndim = cls.ndim
    if ndim is None and directions is not None:
        entries = [directions] if isinstance(directions, str) else list(directions)
        if entries and all(isinstance(e, (int, np.integer)) for e in entries):
            ndim = len(entries)  # one sign tuple given on its own
        elif entries and isinstance(entries[0], str):
            ndim = 2  # corner names exist only in 2-D
        elif entries and isinstance(entries[0], (tuple, list)):
            ndim = len(entries[0])
    if ndim is None:
        raise ValueError("ndim must be given (1, 2 or 3) for a generic MDLSTM")
    if isinstance(ndim, (bool, np.bool_)) or not isinstance(ndim, (int, np.integer)) \
            or not 1 <= ndim <= 3:
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    if cls.ndim is not None and ndim != cls.ndim:
        raise ValueError(f"ndim must be {cls.ndim} for {cls.__name__}, got {ndim}")
    return int(ndim)


def _directions_tuple(directions, ndim):
    """The directions as a tuple of names and sign tuples (validated for ndim)."""
    if directions is None:
        directions = ("tl",) if ndim == 2 else ((1,) * ndim,)
    if isinstance(directions, str) or (
            isinstance(directions, tuple) and directions
            and all(isinstance(s, (int, np.integer)) for s in directions)):
        directions = (directions,)  # one direction given on its own
    parse_directions(directions, ndim)  # validates
    return tuple(e if isinstance(e, str) else tuple(int(s) for s in e) for e in directions)


class MDLSTM:
    """A multi-dimensional LSTM layer over inputs (B, *spatial, C), d = ndim.

    Holds .weights (Z, C + d*N, (3+d)*N) and .bias (Z, (3+d)*N), C-contiguous
    arrays of the layer's dtype; calling it runs fastmdlstm.forward with the
    layer's variant and directions. Build one with random parameters
    (``MDLSTM2D(C, N)``), from given ones (``from_params``) or from a file
    (``load``).
    """

    ndim: int | None = None  # fixed by the subclasses; MDLSTM itself takes it as an argument

    def __init__(self, input_size: int, hidden_size: int, *,
                 directions: Directions | None = None, variant: str = "slstm",
                 dtype: npt.DTypeLike = np.float32,
                 seed: int | np.random.SeedSequence | None = None,
                 ndim: int | None = None) -> None:
        """A layer with fresh parameters from `fastmdlstm.init_params`.

        Parameters
        ----------
        input_size : int
            C, the input channels (>= 1).
        hidden_size : int
            N, the hidden units per direction (>= 1); the output has Z*N channels.
        directions : optional
            The scans (names "tl", "tr", "bl", "br" in 2-D, or sign tuples of d
            entries), one weight set each. Default: ("tl",) in 2-D, else
            ((1,) * d,).
        variant : {"slstm", "graves", "halved", "stable"}
            The cell output rule (see `fastmdlstm.forward`).
        dtype : float32 or float64
            Of the parameters, and so of the computation's expected input.
        seed : optional
            For numpy.random.default_rng: the same seed, the same parameters.
        ndim : {1, 2, 3}, optional
            d; required for MDLSTM itself, fixed by MDLSTM2D / MDLSTM3D.

        Raises
        ------
        TypeError
            Sizes that are not ints, a dtype other than float32/float64.
        ValueError
            Sizes < 1, an ndim that is not 1-3 or not the class's, an unknown
            variant, bad directions.
        """
        ndim = _resolve_ndim(type(self), ndim, directions)
        check_variant(variant, ndim)
        directions = _directions_tuple(directions, ndim)
        weights, bias = init_params(input_size, hidden_size, directions=len(directions),
                                    dtype=dtype, seed=seed, ndim=ndim, variant=variant)
        self._configure(weights, bias, directions, variant, ndim, dtype)

    @classmethod
    def from_params(cls, weights: FloatArray, bias: FloatArray, *,
                    directions: Directions | None = None, variant: str = "slstm",
                    dtype: npt.DTypeLike | None = None, ndim: int | None = None) -> MDLSTM:
        """A layer holding the given parameters (copied).

        Parameters
        ----------
        weights : ndarray, shape (Z, C + d*N, (3+d)*N), or (C + d*N, (3+d)*N) for Z = 1
            float32 or float64 in either byte order (layout: `fastmdlstm.forward`).
        bias : ndarray, shape (Z, (3+d)*N), or ((3+d)*N,) for Z = 1
            float32 or float64 in either byte order.
        directions : optional
            Z directions (names or sign tuples), as for `__init__`.
        variant : {"slstm", "graves", "halved", "stable"}
        dtype : float32 or float64, optional
            Of the layer; default: the weights' float dtype (in native byte order).
        ndim : {1, 2, 3}, optional
            d; for MDLSTM itself taken from the directions when not given.

        Returns
        -------
        MDLSTM
            An instance of the class it is called on; input_size and
            hidden_size are read from the shapes.

        Raises
        ------
        TypeError
            weights or bias not a float32/float64 numpy.ndarray (subclasses other
            than numpy.memmap are refused), dtype not float32/float64.
        ValueError
            Shapes that do not fit a d-D cell of Z directions, bad directions,
            variant or ndim.
        """
        ndim = _resolve_ndim(cls, ndim, directions)
        check_variant(variant, ndim)
        directions = _directions_tuple(directions, ndim)
        layer = cls.__new__(cls)
        layer._configure(weights, bias, directions, variant, ndim, dtype)
        return layer

    def _configure(self, weights, bias, directions, variant, ndim, dtype):
        """Set the layer's state from checked configuration and unchecked arrays;
        the one place that decides what a layer holds (``__init__``,
        ``from_params`` and ``load`` all come here)."""
        for name, value in (("weights", weights), ("bias", bias)):
            _plain_array(value, name)
            if not _is_float(value.dtype):
                raise TypeError(f"{name} must have a float32 or float64 dtype, "
                                f"got {value.dtype}")
        dtype = np.dtype(weights.dtype.newbyteorder("=") if dtype is None else dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        z, d = len(directions), ndim
        if weights.ndim == 2 and z == 1:
            weights = weights[None]
        if bias.ndim == 1 and z == 1:
            bias = bias[None]
        if weights.ndim != 3 or weights.shape[0] != z:
            raise ValueError(f"weights must have shape (Z, C + {d}*N, {3 + d}*N) with "
                             f"Z={z} directions, got {weights.shape}")
        gates = weights.shape[2]
        n = gates // (3 + d)
        input_size = weights.shape[1] - d * n
        if n < 1 or gates % (3 + d) or input_size < 1:
            raise ValueError(f"weights {weights.shape} do not fit a {d}-D cell: it needs "
                             f"(Z, C + {d}*N, {3 + d}*N) with C, N >= 1")
        if bias.shape != (z, gates):
            raise ValueError(f"bias must have shape ({z}, {gates}) to match weights "
                             f"{weights.shape}, got {bias.shape}")
        self._ndim = ndim
        self.directions = directions
        self.variant = variant
        self.input_size = int(input_size)
        self.hidden_size = int(n)
        self.weights = np.array(weights, dtype=dtype, order="C", copy=True)
        self.bias = np.array(bias, dtype=dtype, order="C", copy=True)

    @property
    def spatial_ndim(self) -> int:
        """d, the number of spatial axes of the inputs."""
        return self._ndim

    @property
    def dtype(self) -> np.dtype:
        """The parameters' dtype."""
        return self.weights.dtype

    @property
    def output_size(self) -> int:
        """Z*N, the channels of the output."""
        return len(self.directions) * self.hidden_size

    def __call__(self, x: FloatArray, sizes: npt.ArrayLike | None = None,
                 backend: str = "auto", out: FloatArray | None = None) -> FloatArray:
        """The layer's forward: ``fastmdlstm.forward`` with its parameters,
        variant and directions.

        Parameters
        ----------
        x : ndarray, shape (B, *spatial, C)
            float32 or float64 with d = spatial_ndim spatial axes and C =
            input_size channels. The parameters are cast to x's dtype if it differs.
        sizes : array of int, shape (B, d), optional
            Each sample's valid extent (see `fastmdlstm.forward`).
        backend : {"auto", "numba", "python"}
        out : ndarray, shape (B, *spatial, Z*N), optional
            A buffer of x's dtype to fill and return.

        Returns
        -------
        ndarray, shape (B, *spatial, Z*N)
            The hidden states, directions concatenated along the channel axis.

        Raises
        ------
        TypeError, ValueError, MemoryError
            As `fastmdlstm.forward` (an x with the wrong number of spatial
            axes: ValueError naming x).
        """
        if isinstance(x, np.ndarray) and x.ndim != self._ndim + 2:
            raise ValueError(f"x must have shape (B, *{self._ndim} spatial axes, C), "
                             f"got ndim={x.ndim}")
        return forward(x, self.weights, self.bias, variant=self.variant,
                       directions=self.directions, sizes=sizes, backend=backend, out=out)

    # --- training -------------------------------------------------------------

    def forward(self, x: FloatArray, sizes: npt.ArrayLike | None = None, *,
                train: bool = False, backend: str = "auto") -> FloatArray:
        """The layer's forward; with ``train=True`` it also keeps what
        `backward` needs.

        Parameters
        ----------
        x, sizes, backend
            As for calling the layer.
        train : bool
            Keep x, sizes and the forward's h, c and gates until the next
            training forward: beyond x and h, the cells (an array the size
            of h) and the gates' activations ((3+d)*N values per cell and
            direction: one (B, *S, Z*(3+d)*N) array), so that
            `backward` need not recompute them; and a copy of the
            parameters, so that `backward` refuses to run after they
            changed (an optimiser step in between). Do not modify x or the
            returned h in place before `backward`: it checks h, but with the
            kept gates the numba backend checks x only at each scan's first
            cell.

        Returns
        -------
        ndarray, shape (B, *spatial, Z*N)
            The hidden states.
        """
        if not train:
            return self(x, sizes=sizes, backend=backend)
        if isinstance(x, np.ndarray) and x.ndim != self._ndim + 2:
            raise ValueError(f"x must have shape (B, *{self._ndim} spatial axes, C), "
                             f"got ndim={x.ndim}")
        self._tape = None  # a failed forward must not leave the previous one's tape
        h, c, gates = forward(x, self.weights, self.bias, variant=self.variant,
                              directions=self.directions, sizes=sizes, backend=backend,
                              return_gates=True)
        # sizes copied like the parameters: a caller refilling its array before
        # backward would otherwise change the gradients silently (x and h are
        # checked by the backward, sizes cannot be).
        kept_sizes = None if sizes is None else np.array(sizes, copy=True)
        self._tape = (x, kept_sizes, h, c, gates, backend, self.weights.copy(),
                      self.bias.copy())
        return h

    def backward(self, grad_h: FloatArray, *, grad_c: FloatArray | None = None) -> FloatArray:
        """Gradients of the last training forward (``forward(..., train=True)``):
        `fastmdlstm.backward` given the x, h, c and gates it kept.

        Parameters
        ----------
        grad_h : ndarray, shape (B, *spatial, Z*N)
            Gradient of the loss with respect to the returned h, of x's dtype.
        grad_c : ndarray, optional
            Gradient with respect to the cells (rarely needed); None means 0.

        Returns
        -------
        ndarray, shape of x
            Gradient with respect to x (for the layer below).

        Sets ``grad_weights`` and ``grad_bias`` (shapes and dtype of
        ``weights`` and ``bias``), replacing those of an earlier call:
        gradients are not accumulated. The tape is kept, so backward may be
        called again with other gradients.

        Raises
        ------
        RuntimeError
            No training forward ran before.
        TypeError, ValueError
            As `fastmdlstm.backward` (e.g. grad_h of the wrong shape, h
            changed since the forward); ValueError also when the layer's
            weights or bias changed since the forward.
        """
        if getattr(self, "_tape", None) is None:
            raise RuntimeError("backward needs a training forward first: "
                               "layer.forward(x, train=True)")
        x, sizes, h, c, gates, backend, weights, bias = self._tape
        if not (np.array_equal(weights, self.weights, equal_nan=True)
                and np.array_equal(bias, self.bias, equal_nan=True)):
            raise ValueError("the layer's weights or bias changed since its training forward "
                             "(an optimiser step between forward and backward?): backward "
                             "needs the parameters that computed h; run "
                             "forward(x, train=True) again")
        grad_x, self.grad_weights, self.grad_bias = _backward.backward(
            x, self.weights, self.bias, grad_h, h=h, c=c, variant=self.variant,
            directions=self.directions, sizes=sizes, grad_c=grad_c, gates=gates,
            backend=backend)
        return grad_x

    def parameters(self) -> list:
        """[weights, bias]: the arrays an optimiser updates in place."""
        return [self.weights, self.bias]

    def gradients(self) -> list:
        """[grad_weights, grad_bias] of the last `backward` (None before any)."""
        return [getattr(self, "grad_weights", None), getattr(self, "grad_bias", None)]

    def __repr__(self):
        return (f"{type(self).__name__}(input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, directions={self.directions!r}, "
                f"variant={self.variant!r}, dtype={self.dtype.name}, ndim={self._ndim})")

    def _meta(self):
        return {"format": FORMAT_VERSION, "class": "MDLSTM", "ndim": self._ndim,
                "input_size": self.input_size, "hidden_size": self.hidden_size,
                "variant": self.variant,
                "directions": [d if isinstance(d, str) else list(d)
                               for d in self.directions]}

    def save(self, path: str | os.PathLike) -> None:
        """Write weights, bias and configuration to one .npz archive (no pickles).

        Parameters
        ----------
        path : str or path-like
            Written exactly as given: no ".npz" is appended (unlike numpy.savez),
            so ``load(path)`` reads what ``save(path)`` wrote. An existing file
            is replaced.

        Returns
        -------
        None

        Raises
        ------
        OSError
            The file cannot be written.
        """
        with open(os.fspath(path), "wb") as f:
            np.savez(f, weights=self.weights, bias=self.bias,
                     meta=np.array(json.dumps(self._meta())))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MDLSTM:
        """Read a layer written by ``save``; MDLSTM.load accepts any ndim.

        The metadata is checked first, then each array's size and dtype from
        the archive's headers, before any array data is read (a small file
        cannot make the loader allocate more than its metadata declares, and
        never more than the available memory).

        Parameters
        ----------
        path : str or path-like
            The file, exactly as given (see `save`).

        Returns
        -------
        MDLSTM
            An instance of the class it is called on. Parameters stored in
            non-native byte order are converted to native.

        Raises
        ------
        OSError
            The file cannot be opened (missing, a folder, no permission).
        ValueError
            Anything wrong with its content, in one message naming the file:
            not an .npz archive (empty, truncated, corrupted), missing members,
            metadata that is not valid JSON (including too deep) or holds
            unknown or out-of-range values, an ndim other than the class's,
            arrays whose shape or dtype do not match the metadata, data that
            fails to decompress or its checksum, or a size beyond the available
            memory.
        """
        name = os.fspath(path)
        with open(name, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise _ModelFileError(f"{name}: not a fastmdlstm model file "
                                      "(empty file, 0 bytes)")
            try:
                with zipfile.ZipFile(f) as archive:
                    return cls._read(archive, name)
            except _ModelFileError:
                raise
            except Exception as err:  # noqa: BLE001 - one boundary for every reading failure
                # zipfile.BadZipFile, zlib.error, EOFError, RecursionError (deep JSON),
                # NotImplementedError (compression methods), ...: the file is bad.
                message = " ".join(str(err).split()) or "no details"
                raise _ModelFileError(f"{name}: not a readable fastmdlstm model file "
                                      f"({type(err).__name__}: {message})") from None

    @classmethod
    def _read(cls, archive, name):
        members = {info.filename: info for info in archive.infolist()}
        missing = [m for m in MEMBERS if m + ".npy" not in members]
        if missing:
            raise _ModelFileError(f"{name}: not a fastmdlstm model file (missing {missing[0]!r})")
        meta_info = members["meta.npy"]
        if meta_info.file_size > MAX_META_BYTES:
            raise _ModelFileError(f"{name}: metadata of {meta_info.file_size} bytes "
                             f"(at most {MAX_META_BYTES})")
        with archive.open(meta_info) as member:
            meta = np.lib.format.read_array(io.BytesIO(member.read(MAX_META_BYTES + 1)),
                                            allow_pickle=False)
        if meta.shape != () or meta.dtype.kind != "U":
            raise _ModelFileError(f"{name}: not a fastmdlstm model file (bad metadata)")
        try:
            meta = json.loads(str(meta))
        except RecursionError:
            raise _ModelFileError(f"{name}: metadata nested too deeply") from None
        except ValueError as err:
            raise _ModelFileError(f"{name}: metadata is not valid JSON ({err})") from None
        config = _check_meta(meta, name)
        ndim = config["ndim"]
        if cls.ndim is not None and ndim != cls.ndim:
            raise _ModelFileError(f"{name}: holds a {ndim}-D layer, not {cls.ndim}-D "
                             f"({cls.__name__})")
        z, n, c = len(config["directions"]), config["hidden_size"], config["input_size"]
        expected = {"weights": (z, c + ndim * n, (3 + ndim) * n),
                    "bias": (z, (3 + ndim) * n)}
        dtypes = {key: _member_header(archive, members[key + ".npy"], key, shape, name)
                  for key, shape in expected.items()}
        nbytes = sum(math.prod(shape) * dtypes[key].itemsize for key, shape in expected.items())
        try:
            _check_memory(2 * nbytes, f"loading {name}")  # read, then a native copy
        except MemoryError as err:
            raise _ModelFileError(f"{name}: {err}") from None
        arrays = {}
        for key in expected:
            with archive.open(members[key + ".npy"]) as member:
                arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
            if arrays[key].shape != expected[key]:  # read_array reads what the header says
                raise _ModelFileError(f"{name}: {key} has shape {arrays[key].shape}, "
                                 f"not {expected[key]}")
        try:
            return cls.from_params(arrays["weights"], arrays["bias"],
                                   directions=config["directions"],
                                   variant=config["variant"], ndim=ndim)
        except (TypeError, ValueError) as err:
            raise _ModelFileError(f"{name}: {err}") from None


def _check_meta(meta, name):
    """The configuration in meta, every field checked, or a ValueError."""
    def bad(what):
        return _ModelFileError(f"{name}: not a fastmdlstm model file ({what})")

    if not isinstance(meta, dict):
        raise bad("metadata is not a JSON object")
    required = ("format", "ndim", "input_size", "hidden_size", "variant", "directions")
    missing = [k for k in required if k not in meta]
    if missing:
        raise bad(f"metadata lacks {missing[0]!r}")
    if type(meta["format"]) is not int or meta["format"] != FORMAT_VERSION:
        raise _ModelFileError(f"{name}: unsupported model format {meta['format']!r} "
                         f"(this version reads format {FORMAT_VERSION})")
    if meta.get("class", "MDLSTM") != "MDLSTM":
        raise bad(f"class {meta['class']!r}")
    limits = {"ndim": 3, "input_size": MAX_SIZE, "hidden_size": MAX_SIZE}
    for key, limit in limits.items():
        value = meta[key]
        if type(value) is not int or not 1 <= value <= limit:
            raise bad(f"{key} must be an integer from 1 to {limit}, got {value!r}"[:200])
    if not isinstance(meta["variant"], str) or meta["variant"] not in VARIANTS:
        raise bad(f"variant must be one of {VARIANTS}, got {meta['variant']!r}"[:200])
    try:
        check_variant(meta["variant"], meta["ndim"])
    except ValueError as err:
        raise bad(str(err)) from None
    entries = meta["directions"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_DIRECTIONS or not all(
            isinstance(e, str) or (isinstance(e, list) and all(type(s) is int for s in e))
            for e in entries):
        raise bad(f"directions must be a list of 1 to {MAX_DIRECTIONS} names or lists of "
                  f"+1/-1, got {entries!r}"[:200])
    directions = tuple(e if isinstance(e, str) else tuple(e) for e in entries)
    try:
        parse_directions(directions, meta["ndim"])
    except (TypeError, ValueError) as err:
        raise bad(str(err)) from None
    return {key: meta[key] for key in required[1:5]} | {"directions": directions}


def _member_header(archive, info, key, shape, name):
    """The dtype of an .npy member whose header declares shape and a float dtype
    and whose uncompressed size is exactly header + data; nothing else is read."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(member)
        else:
            raise _ModelFileError(f"{name}: {key} has an unsupported .npy version {version}")
        header_bytes = member.tell()
    found, _, dtype = header
    if not _is_float(dtype):
        raise _ModelFileError(f"{name}: {key} must be float32 or float64, got dtype {dtype}")
    if tuple(found) != shape:
        raise _ModelFileError(f"{name}: {key} has shape {tuple(found)}, but the metadata "
                         f"says {shape}")
    size = header_bytes + math.prod(shape) * dtype.itemsize
    if info.file_size != size:
        raise _ModelFileError(f"{name}: {key} holds {info.file_size} bytes, but its header "
                         f"says {size}")
    return dtype


class MDLSTM2D(MDLSTM):
    """2-D layer over images (B, H, W, C); directions default ("tl",)."""
    ndim = 2


class MDLSTM3D(MDLSTM):
    """3-D layer over volumes or video (B, D, H, W, C); directions default ((1, 1, 1),)."""
    ndim = 3
