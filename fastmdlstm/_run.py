"""Batch inference over .npy files larger than memory (`fastmdlstm run`).

The input is memory-mapped and read chunk by chunk; the output is written
through a memory-mapped .npy under a temporary name in the destination folder
and renamed into place only when complete, so a failed or interrupted run never
leaves a partial file under the output name. Its disk space is reserved before
it is mapped (a full disk is an error message, not a SIGBUS on writing a page),
and the temporary file is removed on any error, on Ctrl-C, SIGTERM and SIGHUP.

Every check that can fail runs before the work: an output that is one of the
inputs (same file: compared by device and inode, so also through links), an
output that is a folder, unreadable or malformed inputs.
"""

import errno
import os
import sys
import tempfile
import threading
import time

import numpy as np

from ._api import forward
from ._layers import MDLSTM

# Default chunk: about this many bytes of input + output per chunk.
CHUNK_BYTES = 256 * 2**20


class RunError(Exception):
    """A user-facing error: reported as one line, never a traceback."""


def one_line(err):
    """An exception as one line of text: its type where the message is empty,
    newlines and runs of spaces collapsed (some messages carry multi-line hints)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


# Loaders turn every failure of reading a file (Exception: OSError, ValueError,
# EOFError, zipfile.BadZipFile, zlib.error, json errors, RecursionError from a deeply
# nested document, OverflowError from out-of-range numbers, ...) into a RunError here,
# at one boundary, rather than listing the exception types that each format raises.

def _load_npy(path, what):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise RunError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise RunError(f"{what} {path}: is a folder, not a file") from None
    except Exception as err:  # the loader boundary (see above)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise RunError(f"{what} {path}: empty file (0 bytes)") from None
        raise RunError(f"{what} {path}: not a readable .npy file ({one_line(err)})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise RunError(f"{what} {path}: an .npz archive, not an .npy array")
    return array


def _load_model(path):
    try:
        return MDLSTM.load(path)
    except FileNotFoundError:
        raise RunError(f"model {path}: no such file") from None
    except IsADirectoryError:
        raise RunError(f"model {path}: is a folder, not a file") from None
    except Exception as err:  # the loader boundary (see above)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise RunError(f"model {path}: empty file (0 bytes)") from None
        raise RunError(f"model {path}: not a usable model file "
                       f"({type(err).__name__}: {one_line(err)})") from None


def _check_output(output_path, inputs):
    """Refuse, before any work, an output that is a folder or the same file as one
    of the inputs [(what, path)]: compared by device and inode, so hard links and
    symbolic links to an input are caught whatever their names."""
    if os.path.isdir(output_path):
        raise RunError(f"output {output_path}: is a folder; name a file, e.g. "
                       f"{os.path.join(output_path, 'out.npy')}")
    if not output_path or output_path.endswith((os.sep, os.altsep or os.sep)):
        raise RunError(f"output {output_path!r}: not a file name")
    try:
        out = os.stat(output_path)
    except OSError:  # does not exist yet (or cannot be stat'ed: found out when writing)
        return
    for what, path in inputs:
        if path is None:
            continue
        try:
            if os.path.samestat(out, os.stat(path)):
                raise RunError(f"output {output_path} is the same file as the {what} "
                               f"{path}; writing it would destroy the {what}")
        except OSError:  # a missing input is reported by its loader
            continue


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


def _reserve(path, nbytes):
    """Allocate the disk blocks of the file's first nbytes now, so that writing its
    memory-mapped pages cannot fail later (a full disk there is a SIGBUS)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or nbytes == 0:  # not on macOS / Windows: no reservation
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, nbytes)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return  # a file system without fallocate: write without a reservation
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise RunError(f"not enough disk space for the output: it needs {nbytes} bytes "
                           f"in {os.path.dirname(path)} ({one_line(err)})") from None
        raise
    finally:
        os.close(fd)


# The compile notice: a first call of a kernel that is not in the on-disk cache
# compiles it (10-20 s); a call that has not returned after this many seconds
# prints a notice once per process.
COMPILE_NOTICE_AFTER_S = 1.0
_notice_printed = False


class compile_notice:
    """Context manager around a first kernel call: when enabled and the call is still
    running after COMPILE_NOTICE_AFTER_S, print once on stderr that the kernels are
    being compiled (a warm cache makes the call return before and prints nothing)."""

    def __init__(self, enabled):
        self.enabled = enabled and not _notice_printed
        self.timer = None

    def _print(self):
        global _notice_printed
        if not _notice_printed:
            _notice_printed = True
            sys.stderr.write("fastmdlstm: compiling kernels once, cached afterwards "
                             "(10-20 s on a first run)...\n")
            sys.stderr.flush()

    def __enter__(self):
        if self.enabled:
            self.timer = threading.Timer(COMPILE_NOTICE_AFTER_S, self._print)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        return False


def _publish(tmp, output_path):
    """Rename the finished file into place, with the permissions a plainly
    created file would have (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, output_path)


def run_file(model_path, input_path, output_path, *, batch_size=None, backend="auto",
             sizes_path=None, progress=False, notice=False):
    """Run a saved layer over INPUT.npy (B, *spatial, C) into OUTPUT.npy.

    Input chunks are cast to the model's dtype. Returns (images, seconds).
    progress: a progress bar on stderr; notice: say so on stderr when the first
    chunk is slow (kernels compiling).
    """
    _check_output(output_path, [("model", model_path), ("input", input_path),
                                ("sizes file", sizes_path)])
    if batch_size is not None and batch_size < 1:
        raise RunError(f"--batch-size must be >= 1, got {batch_size}")
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
    dtype = np.dtype(layer.dtype)
    per_image = (int(np.prod(x.shape[1:])) * x.dtype.itemsize
                 + int(np.prod(out_shape[1:])) * dtype.itemsize)
    if batch_size is None:
        batch_size = max(1, CHUNK_BYTES // max(per_image, 1))

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
        _reserve(tmp, os.path.getsize(tmp))  # header + data, all of the file
        for lo in range(0, batch, batch_size):
            hi = min(batch, lo + batch_size)
            chunk = np.asarray(x[lo:hi], dtype=dtype)
            try:
                with compile_notice(notice and lo == 0):
                    forward(chunk, layer.weights, layer.bias, variant=layer.variant,
                            directions=layer.directions, backend=backend,
                            sizes=None if sizes is None else sizes[lo:hi], out=out[lo:hi])
            except (ValueError, TypeError, MemoryError) as err:
                raise RunError(one_line(err)) from None
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
