"""Autoregressive sampling with fastmdlstm.Stream2D: a toy model of images with K gray
levels, drawn pixel by pixel, then scored row by row.

The model: at pixel (i, j) the spatial LSTM sees its causal context, the pixels to the
left and above (already drawn), as input x_ij = [left, above] / (K - 1); a linear
readout of its h gives the logits of pixel (i, j)'s level, a categorical distribution.
Drawing a pixel needs the h of that pixel, which needs the pixel before: one
`stream.pixel` call per pixel. Scoring a known image (its log-likelihood) can feed whole
rows (`stream.row`), or the whole image to `fastmdlstm.forward`: bitwise the same h.

    python examples/sample_autoregressive.py [--batch B] [--size S] [--levels K]
"""

import argparse
import time

import numpy as np

import fastmdlstm


def context(image, levels):
    """Inputs (B, H, W, 2) of every pixel from a padded image (B, H+1, W+1)
    (row 0 and column 0: the zero context outside the image)."""
    scale = np.float32(1 / (levels - 1))
    return np.stack([image[:, 1:, :-1], image[:, :-1, 1:]], axis=-1) * scale


def log_softmax(logits):
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    B, S, K, N = args.batch, args.size, args.levels, args.hidden

    rng = np.random.default_rng(0)
    weights, bias = fastmdlstm.init_params(2, N, seed=0)
    readout = rng.normal(0, 2 / np.sqrt(N), (N, K)).astype(np.float32)   # h -> logits
    readout_bias = np.zeros(K, np.float32)

    stream = fastmdlstm.Stream2D(weights, bias, batch=B, width=S)
    image = np.zeros((B, S + 1, S + 1), np.float32)    # levels 0 .. K-1; padded context
    x_px = np.empty((B, 2), np.float32)
    h = np.empty((B, N), np.float32)
    log_p = np.zeros(B)
    scale = np.float32(1 / (K - 1))
    fastmdlstm.Stream2D(weights, bias, batch=B, width=S).pixel(x_px, out=h)  # compile (once)
    start = time.perf_counter()
    for i in range(1, S + 1):
        for j in range(1, S + 1):
            x_px[:, 0] = image[:, i, j - 1] * scale      # the pixel to the left
            x_px[:, 1] = image[:, i - 1, j] * scale      # the pixel above
            stream.pixel(x_px, out=h)
            logp = log_softmax(h @ readout + readout_bias)  # (B, K)
            # draw from the categorical distribution (inverse CDF of one uniform)
            level = (np.exp(logp).cumsum(axis=1) < rng.random((B, 1))).sum(axis=1)
            level = np.minimum(level, K - 1)
            image[:, i, j] = level
            log_p += logp[np.arange(B), level]
    elapsed = time.perf_counter() - start
    print(f"drew {B} images of {S}x{S} pixels with {K} levels in {elapsed:.3f} s "
          f"({elapsed / (S * S) * 1e6:.1f} us per pixel of the whole batch, sampling "
          "included)")

    # Score the drawn images: the same model, fed whole rows (teacher forcing).
    x = context(image, K)
    stream.reset()
    score = np.zeros(B)
    for i in range(S):
        h_row = stream.row(x[:, i])                       # (B, S, N)
        logp = log_softmax(h_row @ readout + readout_bias)
        score += np.take_along_axis(logp, image[:, i + 1, 1:, None].astype(np.intp),
                                    axis=2)[..., 0].sum(axis=1)
    # and all at once: forward gives bitwise the h of the stream
    h_all = fastmdlstm.forward(x, weights, bias)
    assert np.array_equal(h_all[:, -1], h_row)
    assert np.allclose(score, log_p, rtol=1e-4), (score, log_p)
    print("log-likelihood per pixel (bits):",
          np.round(-log_p / (S * S) / np.log(2), 3).tolist())
    levels, counts = np.unique(image[:, 1:, 1:], return_counts=True)
    print("level frequencies:", dict(zip(levels.astype(int).tolist(),
                                         np.round(counts / counts.sum(), 3).tolist())))


if __name__ == "__main__":
    main()
