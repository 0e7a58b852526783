"""Layer objects: parameters plus configuration, saved to one .npz file."""

import json

import numpy as np

from ._api import FLOAT_DTYPES, VARIANTS, _check_choice, forward, init_params, parse_directions

FORMAT_VERSION = 1


class MDLSTM:
    """A multi-dimensional LSTM layer over inputs (B, *spatial, C), d = ndim.

    Holds .weights (Z, C + d*N, (3+d)*N) and .bias (Z, (3+d)*N); calling it runs
    fastmdlstm.forward with the layer's variant and directions.
    """

    ndim = None  # fixed by the subclasses; MDLSTM itself takes it as an argument

    def __init__(self, input_size, hidden_size, *, directions=None, variant="slstm",
                 dtype=np.float32, seed=None, ndim=None):
        if ndim is None:
            ndim = self.ndim
        if ndim is None:
            raise ValueError("ndim must be given (1, 2 or 3) for a generic MDLSTM")
        if self.ndim is not None and ndim != self.ndim:
            raise ValueError(f"ndim must be {self.ndim} for {type(self).__name__}, got {ndim}")
        _check_choice(variant, "variant", VARIANTS)
        if directions is None:
            directions = ("tl",) if ndim == 2 else ((1,) * ndim,)
        if isinstance(directions, str):
            directions = (directions,)
        parse_directions(directions, ndim)  # validates
        self.directions = tuple(d if isinstance(d, str) else tuple(int(s) for s in d)
                                for d in directions)
        self.variant = variant
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self._ndim = int(ndim)
        self.weights, self.bias = init_params(
            input_size, hidden_size, directions=len(self.directions), dtype=dtype,
            seed=seed, ndim=ndim)

    @property
    def spatial_ndim(self):
        return self._ndim

    @property
    def dtype(self):
        return self.weights.dtype

    @property
    def output_size(self):
        return len(self.directions) * self.hidden_size

    def __call__(self, x, sizes=None, backend="auto", out=None):
        if isinstance(x, np.ndarray) and x.ndim != self._ndim + 2:
            raise ValueError(f"x must have shape (B, *{self._ndim} spatial axes, C), "
                             f"got ndim={x.ndim}")
        return forward(x, self.weights, self.bias, variant=self.variant,
                       directions=self.directions, sizes=sizes, backend=backend, out=out)

    def __repr__(self):
        return (f"{type(self).__name__}(input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, directions={self.directions!r}, "
                f"variant={self.variant!r}, dtype={self.dtype.name}, ndim={self._ndim})")

    def save(self, path):
        """Write weights, bias and configuration to one .npz (no pickles)."""
        meta = {"format": FORMAT_VERSION, "class": "MDLSTM", "ndim": self._ndim,
                "input_size": self.input_size, "hidden_size": self.hidden_size,
                "variant": self.variant,
                "directions": [d if isinstance(d, str) else list(d)
                               for d in self.directions]}
        np.savez(path, weights=self.weights, bias=self.bias,
                 meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path):
        """Read a layer written by save(); MDLSTM.load accepts any ndim."""
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not a fastmdlstm model file (not an .npz archive)")
        with data:
            try:
                meta = json.loads(str(data["meta"]))
                weights, bias = data["weights"], data["bias"]
            except KeyError as err:
                raise ValueError(f"{path}: not a fastmdlstm model file "
                                 f"(missing {err.args[0]!r})") from None
        required = ("format", "ndim", "input_size", "hidden_size", "variant", "directions")
        if not isinstance(meta, dict) or any(k not in meta for k in required):
            raise ValueError(f"{path}: not a fastmdlstm model file (bad metadata)")
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported model format {meta.get('format')!r}")
        if cls.ndim is not None and meta["ndim"] != cls.ndim:
            raise ValueError(f"{path}: holds a {meta['ndim']}-D layer, not "
                             f"{cls.ndim}-D ({cls.__name__})")
        if weights.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{path}: weights have dtype {weights.dtype}")
        layer = cls.__new__(cls)
        layer._ndim = int(meta["ndim"])
        layer.input_size = int(meta["input_size"])
        layer.hidden_size = int(meta["hidden_size"])
        layer.variant = meta["variant"]
        layer.directions = tuple(d if isinstance(d, str) else tuple(d)
                                 for d in meta["directions"])
        d, n, z = layer._ndim, layer.hidden_size, len(layer.directions)
        expected = (z, layer.input_size + d * n, (3 + d) * n)
        if weights.shape != expected or bias.shape != (z, (3 + d) * n):
            raise ValueError(f"{path}: weights {weights.shape} / bias {bias.shape} "
                             f"do not match the configuration {expected}")
        layer.weights, layer.bias = weights, bias
        return layer


class MDLSTM2D(MDLSTM):
    """2-D layer over images (B, H, W, C); directions default ("tl",)."""
    ndim = 2


class MDLSTM3D(MDLSTM):
    """3-D layer over volumes or video (B, D, H, W, C); directions default ((1, 1, 1),)."""
    ndim = 3
