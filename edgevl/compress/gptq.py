"""GPTQ rounding for int8 weights (Frantar et al., 2022): round a weight's input rows one at a
time and push each row's rounding error onto the rows not yet rounded, weighted by the inverse
Hessian of the layer's inputs on the calibration set, so the layer's *output* error is what is
minimised rather than each weight's own.

The scales stay the runtime quantizer's (per output column, symmetric); only which grid point
each weight takes changes, so the artifact's size, ops and speed are those of round-to-nearest.
Measured on all-MiniLM-L6-v2's text tower with every layer int8 (ORT dynamic int8, the parity
captions): min cosine 0.9910 -> 0.9937, SQNR 20.9 -> 22.8 dB.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def input_hessians(
    model: "object", inputs: Iterable[str], feeds: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """H = sum of x^T x over every calibration row of each named tensor ([C, C], float64)."""
    from edgevl.compress.ort_graph import session_with_outputs

    wanted = sorted(set(inputs))
    sess, names = session_with_outputs(model, wanted)
    rows: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    for feed in feeds:
        values = dict(zip(names, sess.run(None, feed)))
        for t in wanted:
            rows[t].append(values[t].reshape(-1, values[t].shape[-1]))
    # One float64 GEMM per tensor: a product per feed is slower, and float32 sums move the
    # gate's figures, so the exact sum is kept.
    hessians = {}
    for t in wanted:
        x = np.concatenate(rows.pop(t)).astype(np.float64)
        hessians[t] = x.T @ x
    return hessians


def upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U, upper triangular with a positive diagonal, such that U^T U = H^-1 (H symmetric positive
    definite): the factor `cholesky(inv(H)).T`, from one Cholesky factorisation and one triangular
    inverse instead of a general inverse and a second factorisation. With P the reversal
    permutation and P H P = L L^T, H^-1 = (P L^-1 P)^T (P L^-1 P), and P L^-1 P is upper."""
    from scipy.linalg import lapack

    lower = np.linalg.cholesky(np.ascontiguousarray(h[::-1, ::-1]))
    inverse, info = lapack.dtrtri(lower, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (LAPACK dtrtri info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1])


def gptq_int8(
    weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, damp: float = 0.01, block: int = 128,
    qmax: int = 127,
) -> np.ndarray:
    """int8 values in [-qmax, qmax] for `weight` [K, N] (used as x @ W) on the per-column grid
    `scale` [N].

    `damp` (a share of the mean Hessian diagonal) keeps the inverse well conditioned; inputs
    that never fire (zero diagonal) get weight 0, as in the reference implementation."""
    w = weight.astype(np.float64).copy()
    k = w.shape[0]
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    # Upper Cholesky factor of H^-1: row i holds how row i's error spreads to rows after it.
    hinv = upper_cholesky_of_inverse(h)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float64)
    q = np.zeros_like(w)
    for b0 in range(0, k, block):
        b1 = min(k, b0 + block)
        wb = w[b0:b1].copy()
        err = np.zeros_like(wb)
        for i in range(b1 - b0):
            row = b0 + i
            q[row] = np.clip(np.round(wb[i] / scale), -qmax, qmax)
            e = (wb[i] - q[row] * scale) / hinv[row, row]
            wb[i:] -= np.outer(hinv[row, row:b1], e)
            err[i] = e
        # Rows after the block take the block's errors in one product.
        w[b1:] -= hinv[b0:b1, b1:].T @ err
    return q.astype(np.int8)
