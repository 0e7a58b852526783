"""fastmdlstm: Numba-accelerated multi-dimensional LSTMs (Spatial LSTM, MDLSTM)."""

from . import _cachedir  # noqa: F401  (first: where a source checkout caches kernels)
from ._api import (
    HAVE_NUMBA,
    choose_backend,
    forward,
    forward_inplace,
    init_params,
    parse_directions,
)
from ._backward import backward, backward_inplace
from ._dispatch import Choice
from ._layers import MDLSTM, MDLSTM2D, MDLSTM3D
from ._stream import Stream2D, Stream3D

__version__ = "0.1.0"

__all__ = ["forward", "forward_inplace", "backward", "backward_inplace", "init_params",
           "choose_backend", "Choice",
           "MDLSTM", "MDLSTM2D", "MDLSTM3D", "HAVE_NUMBA", "parse_directions",
           "Stream2D", "Stream3D", "__version__"]

if HAVE_NUMBA:
    from . import kernels  # noqa: F401  (kernel-level entry points for @njit code)
