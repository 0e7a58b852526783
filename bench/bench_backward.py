"""Backward (training) pass per configuration: one group "backward-NAME" each.

Implementations (extra_info "impl"):
  forward        fastmdlstm.forward(..., return_cell=True, return_gates=True): what
                 training runs first (h, c and the gates' activations)
  inference forward
                 fastmdlstm.forward(...) alone (h only): the forward of inference,
                 the stricter yardstick for the backward's time
  backward       fastmdlstm.backward given that forward's h, c and gates (gates=)
  fwd+bwd        both, one after the other (a training step of this layer)
  backward (recompute)
                 fastmdlstm.backward given only the h and c of a plain
                 forward(..., return_cell=True): it recomputes the gates (the
                 path before gates were kept, and the one without them)
  torch fwd+bwd  the PyTorch autograd peer (bench/torch_peer.make_autograd_runner):
                 forward with grad-requiring leaves, then backward of sum(h * grad_h)
  python backward  the NumPy fallback's backward, recomputing (digits only; too slow
                 elsewhere)
  alternating    one inference forward, then one backward (given gates), each timed,
                 per round: a burst of load from a neighbour on these shared machines
                 then hits both sides of the ratio, where separate rows can catch it on
                 one side only. extra_info "bwd_over_inference_fwd": the median of the
                 rounds' backward / forward ratios; "bwd_over_inference_fwd_rounds":
                 every round's ratio

bench/report_backward.py turns the JSON into a table. In smoke mode
(--benchmark-disable) every benchmark runs once on a shrunken configuration
(batch 2, 12 x 12) so that CI stays fast; timed runs use the full sizes.
"""

import time

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm._bench import CONFIGS

NAMES = ["standard", "digits"]
PYTHON_BACKWARD = {"digits"}  # where the NumPy fallback's backward takes < ~1 s


@pytest.fixture
def smoke(request):
    return bool(request.config.getoption("benchmark_disable", False))


def _setup(name, smoke):
    config = CONFIGS[name]
    if smoke:
        config = config._replace(batch=min(config.batch, 2), spatial=(12, 12))
    x, weights, bias = config.problem()
    grad_h = np.random.default_rng(1).standard_normal(
        x.shape[:-1] + (config.n_directions * config.hidden,)).astype(x.dtype)
    return config, x, weights, bias, grad_h


def _info(config, name):
    # flops: the forward's matrix products; the backward does twice as many
    # (gradients of both the inputs and the weights of each product).
    return dict(flops=config.flops, config=name, batch=config.batch,
                spatial=list(config.spatial))


@pytest.mark.parametrize("name", NAMES)
def test_forward(run_bench, smoke, name):
    config, x, weights, bias, _ = _setup(name, smoke)
    run_bench(lambda: fastmdlstm.forward(x, weights, bias, directions=config.directions,
                                         return_cell=True, return_gates=True),
              group=f"backward-{name}", impl="forward", **_info(config, name))


@pytest.mark.parametrize("name", NAMES)
def test_inference_forward(run_bench, smoke, name):
    config, x, weights, bias, _ = _setup(name, smoke)
    run_bench(lambda: fastmdlstm.forward(x, weights, bias, directions=config.directions),
              group=f"backward-{name}", impl="inference forward", **_info(config, name))


@pytest.mark.parametrize("name", NAMES)
def test_backward(run_bench, smoke, name):
    config, x, weights, bias, grad_h = _setup(name, smoke)
    h, c, gates = fastmdlstm.forward(x, weights, bias, directions=config.directions,
                                     return_cell=True, return_gates=True)
    run_bench(lambda: fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c, gates=gates,
                                          directions=config.directions),
              group=f"backward-{name}", impl="backward", **_info(config, name))


@pytest.mark.parametrize("name", NAMES)
def test_alternating(run_bench, benchmark, smoke, name):
    config, x, weights, bias, grad_h = _setup(name, smoke)
    h, c, gates = fastmdlstm.forward(x, weights, bias, directions=config.directions,
                                     return_cell=True, return_gates=True)
    ratios = []

    def pair():
        start = time.perf_counter()
        fastmdlstm.forward(x, weights, bias, directions=config.directions)
        middle = time.perf_counter()
        fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c, gates=gates,
                            directions=config.directions)
        ratios.append((time.perf_counter() - middle) / (middle - start))

    run_bench(pair, group=f"backward-{name}", impl="alternating", **_info(config, name))
    timed = ratios[1:] if len(ratios) > 1 else ratios  # the first call is the warm-up
    benchmark.extra_info["bwd_over_inference_fwd"] = float(np.median(timed))
    # Every round's ratio, for report_backward's interval and for pooling runs.
    benchmark.extra_info["bwd_over_inference_fwd_rounds"] = [float(r) for r in timed]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(run_bench, smoke, name):
    config, x, weights, bias, grad_h = _setup(name, smoke)

    def step():
        h, c, gates = fastmdlstm.forward(x, weights, bias, directions=config.directions,
                                         return_cell=True, return_gates=True)
        return fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c, gates=gates,
                                   directions=config.directions)

    run_bench(step, group=f"backward-{name}", impl="fwd+bwd", **_info(config, name))


@pytest.mark.parametrize("name", NAMES)
def test_backward_recompute(run_bench, smoke, name):
    config, x, weights, bias, grad_h = _setup(name, smoke)
    h, c = fastmdlstm.forward(x, weights, bias, directions=config.directions,
                              return_cell=True)
    run_bench(lambda: fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c,
                                          directions=config.directions),
              group=f"backward-{name}", impl="backward (recompute)", **_info(config, name))


@pytest.mark.parametrize("name", NAMES)
def test_torch_autograd(run_bench, smoke, name):
    torch = pytest.importorskip("torch")
    import torch_peer
    config, x, weights, bias, grad_h = _setup(name, smoke)
    torch.set_num_threads(fastmdlstm._api.numba.get_num_threads())
    run = torch_peer.make_autograd_runner(x, weights, bias,
                                          directions=config.directions or ("tl",))
    grad_h_t = torch.from_numpy(grad_h)
    run_bench(lambda: run(grad_h_t), group=f"backward-{name}", impl="torch fwd+bwd",
              torch_version=torch.__version__, **_info(config, name))


@pytest.mark.parametrize("name", sorted(PYTHON_BACKWARD))
def test_python_backward(run_bench, smoke, name):
    config, x, weights, bias, grad_h = _setup(name, smoke)
    h, c = fastmdlstm.forward(x, weights, bias, directions=config.directions,
                              return_cell=True)
    run_bench(lambda: fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c,
                                          directions=config.directions, backend="python"),
              group=f"backward-{name}", impl="python backward", **_info(config, name))


def test_torch_autograd_peer_matches_backward():
    """The peer computes the same gradients as fastmdlstm.backward (float64, to 1e-8)."""
    pytest.importorskip("torch")
    import torch_peer
    assert torch_peer._self_check_autograd() <= 1e-8
