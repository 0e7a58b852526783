"""Forward pass per configuration (group), parametrised over backend and peers.

Peers: the pure-Python fallback, a PyTorch eager wavefront implementation
(bench/torch_peer.py; skipped when torch is absent) and the machine's float32
GEMM rate (the roof). The machine's measured FMA peak (independent chains of
vector FMAs, per dtype, on 1 thread and on all) is the yardstick: bench/report.py
turns the JSON into the README table with each row's % of that peak.
"""

import numpy as np
import pytest
from benchutil import gemm_roof_problem

import fastmdlstm
from fastmdlstm._bench import CONFIGS, fma_probe

NAMES_2D = ["tiny", "digits", "standard", "wide", "single-large", "standard-4dir",
            "standard-f64"]
NAMES_3D = ["volume", "volume-8dir"]


def _setup(name):
    config = CONFIGS[name]
    x, weights, bias = config.problem()
    out = np.empty(x.shape[:-1] + (config.n_directions * config.hidden,), x.dtype)
    return config, x, weights, bias, out


@pytest.mark.parametrize("backend", ["auto", "numba", "python"])
@pytest.mark.parametrize("name", NAMES_2D + NAMES_3D)
def test_forward(run_bench, name, backend):
    config, x, weights, bias, out = _setup(name)
    run_bench(lambda: fastmdlstm.forward(x, weights, bias, directions=config.directions,
                                         backend=backend, out=out),
              group=name, flops=config.flops, impl=backend, config=name,
              dtype=np.dtype(config.dtype).name)


@pytest.mark.parametrize("name", NAMES_2D)
def test_torch_peer(run_bench, name):
    torch = pytest.importorskip("torch")
    import torch_peer
    config, x, weights, bias, _ = _setup(name)
    torch.set_num_threads(fastmdlstm._api.numba.get_num_threads())
    run = torch_peer.make_runner(x, weights, bias, directions=config.directions or ("tl",))
    run_bench(run, group=name, flops=config.flops, impl="torch", config=name,
              torch_version=torch.__version__, dtype=np.dtype(config.dtype).name)


def test_forward_inplace_standard(run_bench):
    """The natural padded layout: states (B, H+1, W+1, N) updated in place."""
    config, x, weights, bias, _ = _setup("standard")
    shape = (config.batch,) + tuple(s + 1 for s in config.spatial) + (config.hidden,)
    h = np.zeros(shape, x.dtype)
    c = np.zeros(shape, x.dtype)
    run_bench(lambda: fastmdlstm.forward_inplace(x, weights, bias, h, c),
              group="standard", flops=config.flops, impl="inplace", config="standard",
              dtype="float32")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["digits", "single-large"])
def test_thread_scaling(run_bench, numba_threads, name, threads):
    config, x, weights, bias, out = _setup(name)
    numba_threads(threads)
    run_bench(lambda: fastmdlstm.forward(x, weights, bias, out=out, backend="numba"),
              group=f"scaling-{name}", flops=config.flops, impl=f"numba-{threads}t",
              config=name, threads=threads, dtype=np.dtype(config.dtype).name)


def test_gemm_roof(run_bench):
    """NumPy float32 matmul of a large square: the machine's roof in FLOP/s."""
    a, b, flops = gemm_roof_problem()
    out = np.empty_like(a)
    run_bench(lambda: np.matmul(a, b, out=out), group="roof", flops=flops, impl="gemm",
              config="gemm-2048", dtype="float32")


@pytest.mark.parametrize("threads", ["1", "all"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_peak(run_bench, numba_threads, dtype, threads):
    """The machine's FMA peak: independent vector FMA chains on 1 thread or on all
    (numba's thread count), about 20 ms per call."""
    count = 1 if threads == "1" else fastmdlstm._api.numba.get_num_threads()
    numba_threads(max(count, 1))
    fn, flops = fma_probe(threads=count, dtype=dtype)
    run_bench(fn, group="peak", flops=flops, impl=f"fma-{dtype}-{count}t",
              config="fma-peak", threads=count, dtype=dtype)
