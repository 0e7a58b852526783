"""Peak resident memory added by a forward: the kernels keep only a small ring
of state rows per (sample, direction) in flight, never an input projection or a
cell-state tensor of the whole batch."""

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm._bench import CONFIGS


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


@pytest.mark.skipif(not fastmdlstm.HAVE_NUMBA, reason="numba not importable")
@pytest.mark.parametrize("name", ["standard", "standard-4dir", "single-large"])
def test_peak_memory_of_forward_with_out(name, threads):
    threads(2)  # the parallel drivers, whose state is largest
    config = CONFIGS[name]
    x, w, b = config.problem()
    out = np.empty(x.shape[:-1] + (config.n_directions * config.hidden,), x.dtype)
    fastmdlstm.forward(x, w, b, directions=config.directions, out=out)  # compile, warm
    out[...] = 1  # out's pages are resident before the measurement
    if not _reset_peak():
        pytest.skip("cannot reset the peak RSS on this system")
    before = _status("VmRSS")
    fastmdlstm.forward(x, w, b, directions=config.directions, out=out)
    added = _status("VmHWM") - before
    assert added <= 0.5 * out.nbytes, (added, out.nbytes)
