"""Batch inference over .npy files larger than memory (`fastmdlstm run`).

The input is memory-mapped and read chunk by chunk; the output is written
through a memory-mapped .npy under a temporary name in the destination folder
and renamed into place only when complete, so a failed or interrupted run never
leaves a partial file under the output name.
"""

import os
import sys
import tempfile
import time
import zipfile

import numpy as np

from ._api import forward
from ._layers import MDLSTM

# Default chunk: about this many bytes of input + output per chunk.
CHUNK_BYTES = 256 * 2**20


class RunError(Exception):
    """A user-facing error: reported as one line, never a traceback."""


def _load_npy(path, what):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise RunError(f"{what} {path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise RunError(f"{what} {path}: not a readable .npy file ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise RunError(f"{what} {path}: an .npz archive, not an .npy array")
    return array


def _load_model(path):
    try:
        return MDLSTM.load(path)
    except FileNotFoundError:
        raise RunError(f"model {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile) as err:
        raise RunError(f"model {path}: not a usable model file ({err})") from None


class Progress:
    """A one-line progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, total, enabled):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()

    def update(self, done):
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(self.total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"images  {rate:.1f} images/s")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _publish(tmp, output_path):
    """Rename the finished file into place, with the permissions a plainly
    created file would have (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, output_path)


def run_file(model_path, input_path, output_path, *, batch_size=None, backend="auto",
             sizes_path=None, progress=False):
    """Run a saved layer over INPUT.npy (B, *spatial, C) into OUTPUT.npy.

    Input chunks are cast to the model's dtype. Returns (images, seconds).
    """
    layer = _load_model(model_path)
    x = _load_npy(input_path, "input")
    d = layer.spatial_ndim
    if x.ndim != d + 2:
        raise RunError(f"input {input_path}: shape {x.shape} is not (B, *{d} spatial axes, C) "
                       f"for the {d}-D model")
    if x.shape[-1] != layer.input_size:
        raise RunError(f"input {input_path} has {x.shape[-1]} channels but the model expects "
                       f"{layer.input_size}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise RunError(f"input {input_path}: dtype {x.dtype} is not a real number type")
    sizes = None
    if sizes_path is not None:
        sizes = np.asarray(_load_npy(sizes_path, "sizes"))
        if sizes.shape != (x.shape[0], d) or not np.issubdtype(sizes.dtype, np.integer):
            raise RunError(f"sizes {sizes_path}: expected integers of shape "
                           f"({x.shape[0]}, {d}), got {sizes.dtype} {sizes.shape}")
    batch = x.shape[0]
    out_shape = x.shape[:-1] + (layer.output_size,)
    dtype = layer.dtype
    per_image = (int(np.prod(x.shape[1:])) * x.dtype.itemsize
                 + int(np.prod(out_shape[1:])) * dtype.itemsize)
    if batch_size is None:
        batch_size = max(1, CHUNK_BYTES // max(per_image, 1))
    if batch_size < 1:
        raise RunError(f"--batch-size must be >= 1, got {batch_size}")

    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise RunError(f"output {output_path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastmdlstm-", suffix=".npy.part")
    os.close(fd)
    bar = Progress(batch, progress)
    start = time.perf_counter()
    try:
        if 0 in out_shape:  # nothing to map: numpy cannot mmap an empty data block
            with open(tmp, "wb") as f:
                np.save(f, np.zeros(out_shape, dtype))
            _publish(tmp, output_path)
            return batch, time.perf_counter() - start
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=out_shape)
        for lo in range(0, batch, batch_size):
            hi = min(batch, lo + batch_size)
            chunk = np.asarray(x[lo:hi], dtype=dtype)
            try:
                forward(chunk, layer.weights, layer.bias, variant=layer.variant,
                        directions=layer.directions, backend=backend,
                        sizes=None if sizes is None else sizes[lo:hi], out=out[lo:hi])
            except (ValueError, TypeError, MemoryError) as err:
                raise RunError(str(err)) from None
            bar.update(hi)
        out.flush()
        del out
        _publish(tmp, output_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        bar.close()
    return batch, time.perf_counter() - start
