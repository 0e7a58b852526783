"""Train a tiny PyTorch classifier built on fastmdlstm.torch.MDLSTM2d.

Synthetic 8x8 grey images of four patterns (a horizontal bar, a vertical bar,
a diagonal, a square outline) at random positions, with noise. The model: one
four-direction MDLSTM2d layer (every pixel then sees the whole image), the
mean over the pixels, and a linear classifier. Runs in seconds on a CPU:

    python examples/torch_train.py [--steps 150] [--seed 0] [--threads 1]

Threads: on images this small a parallel region costs more than the work it
shares, and PyTorch and Numba each keep their own pool of OpenMP threads, which
compete for the same cores. So the example runs both on one thread (--threads).
"""

import argparse
import time

import numba
import numpy as np
import torch
from torch import nn

from fastmdlstm.torch import MDLSTM2d

CLASSES = ("horizontal bar", "vertical bar", "diagonal", "square")


def make_batch(rng, batch, size=8, noise=0.3):
    """Images (batch, 1, size, size) float32 and labels (batch,) int64."""
    labels = rng.integers(0, len(CLASSES), batch)
    images = noise * rng.standard_normal((batch, 1, size, size))
    for img, label in zip(images[:, 0], labels):
        r, c = rng.integers(1, size - 4, 2)
        if label == 0:
            img[r + 1, c:c + 4] += 1
        elif label == 1:
            img[r:r + 4, c + 1] += 1
        elif label == 2:
            img[np.arange(4) + r, np.arange(4) + c] += 1
        else:
            img[r, c:c + 4] += 1
            img[r + 3, c:c + 4] += 1
            img[r + 1:r + 3, c] += 1
            img[r + 1:r + 3, c + 3] += 1
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


class Classifier(nn.Module):
    def __init__(self, hidden=8, seed=0):
        super().__init__()
        # (B, 1, H, W) -> (B, 4*hidden, H, W): PyTorch's channels-first layout.
        self.mdlstm = MDLSTM2d(1, hidden, directions=("tl", "tr", "bl", "br"), seed=seed)
        self.head = nn.Linear(4 * hidden, len(CLASSES))

    def forward(self, x):
        return self.head(self.mdlstm(x).mean(dim=(2, 3)))


def train(steps=150, batch=32, lr=0.02, seed=0, log_every=25, verbose=True):
    """Train and return (first loss, mean loss of the last 10 steps, test accuracy)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Classifier(seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        x, y = make_batch(rng, batch)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}")
    with torch.no_grad():
        x, y = make_batch(rng, 256)
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    if verbose:
        print(f"{steps} steps in {time.perf_counter() - start:.1f} s; "
              f"test accuracy {accuracy:.2f} (chance {1 / len(CLASSES):.2f})")
    return losses[0], float(np.mean(losses[-10:])), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for PyTorch and for fastmdlstm's Numba kernels")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    train(steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
