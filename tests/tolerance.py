"""Float tolerances derived from the arithmetic a value went through, so that a comparison holds on
any CPU and a real error still fails. Imported like the conftest helpers: `from tolerance import ...`.

Why not a fixed `rel=1e-5`: CPUs differ in the kernels they run (AVX2, AVX-512, AMX tiles, oneDNN
blocking, thread counts) and each kernel sums float32 values in its own order, so a float32 result
moves by a few roundings from one machine to the next. How far it may move is set by the size of
the values it was summed from, not by the size of the result: a KL divergence is a small difference
of large terms (sum p log p - sum p log q), and its rounding error is a few ulps of those terms,
which can be a thousand times the result (a relative bound then fails on some machine for no bug).

The rules the tests follow:

1. References are computed in float64 (about 1e-16 relative), so the only error left to bound is
   the float32 arithmetic of the code under test, and `float32_bound` bounds it.

2. float32_bound(magnitudes, n) = ulps * EPS32 * (log2(n) + 2) * sum(|magnitudes|)

   - EPS32 = 2**-23, one ulp at 1.0; a float32 rounding errs by at most EPS32/2 of the value rounded.
   - sum(|magnitudes|): the sizes of every value the result is summed from, and of the operands of
     the few elementwise steps that form each term (for a log-softmax: the logits and the
     normaliser logsumexp; for a KL: p|log p| and p|log q|). Never the size of the result itself.
   - log2(n) + 2: summing n terms pairwise or in blocks (what vectorised CPU reductions and
     BLAS / oneDNN / AMX micro-kernels do, each in its own order) errs by at most
     ceil(log2 n) * EPS32/2 * sum|x_i| (Higham, Accuracy and Stability of Numerical Algorithms,
     sec. 4.2); the +2 covers the constant number of roundings (exp, log, product, difference)
     that form each term. n is the longest reduction on the way (e.g. the vocabulary of a softmax).
   - ulps (default 1): 2 where a value goes through two such stages (normalise, then sum).
   A strictly sequential sum could in theory reach n * EPS32/2 * sum|x_i|; rounding errors of both
   signs cancel in practice: in these tests the deviation seen is at most a fifth of the bound and
   mostly under 5% of it. Yet (checked by injecting errors) a dropped term or bucket, a missing
   shift, padding counted, or a 0.1% scaling of one of the terms summed fails it. (A 0.1% change of
   a result a thousand times smaller than its terms is below float32 resolution: no bound sees it.)

3. Models compared across two code paths (cached vs online teacher, accumulated vs one batch,
   resumed vs uninterrupted, a merged LoRA vs its adapter): float32 kernels round each path its own
   way, and in training Adam, dividing each gradient by its own running size, turns a rounding
   difference in a gradient that nearly cancels into a visible weight difference. Those tests run
   their tiny models in float64 (`.double()`): the forward/backward passes then differ by ~1e-16 and
   the only float32 left is the loss arithmetic hfkd always does in float32 (`hfkd.losses`) on the
   same inputs, so bounds like 1e-5 hold on any machine while a real difference (a wrong teacher
   row, a missing shift, a mis-normalised accumulation) is orders of magnitude above them.

4. Exact by construction, kept exact: the same computation repeated in one process on the same
   values (determinism of two identical runs, a model saved and reloaded, DDP replicas after each
   all-reduce), copies of tensors, and integer results (argmax, top-k ids, counts) where the
   deciding gaps are far above float32 rounding.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23


def float32_bound(magnitudes, n: int | None = None, ulps: float = 1.0, dim: int | None = None):
    """Bound on |float32 result - exact result| for a result summed from terms of these magnitudes.

    `magnitudes`: a tensor (or number, or sequence) of the sizes involved (see the module docstring);
    `n`: the length of the longest reduction (defaults to the number of magnitudes, or their size
    along `dim`); `dim`: sum along it only, for a bound per entry (a tensor; else a float).
    """
    if torch.is_tensor(magnitudes):
        m = magnitudes.detach().double().abs()
    else:
        m = torch.as_tensor(magnitudes, dtype=torch.float64).abs()
    if n is None:
        n = m.numel() if dim is None else m.shape[dim]
    factor = ulps * EPS32 * (math.log2(max(n, 1)) + 2)
    return factor * (float(m.sum()) if dim is None else m.sum(dim))


def kl_magnitudes(log_p: torch.Tensor, log_q: torch.Tensor, *normalisers: torch.Tensor) -> torch.Tensor:
    """Per item, the sizes a float32 KL(p || q) or cross-entropy -sum p log q is computed from.

    `log_p`, `log_q`: exact (float64) log-probabilities [..., classes]; `normalisers`: for each side
    computed from logits in float32, its logsumexp [...] (log q_c = z_c - logsumexp(z), so each log q
    carries the rounding of that normaliser). Returns sum_c p_c (|log p_c| + |log q_c|) + sum |normaliser|.
    """
    log_p, log_q = log_p.double(), log_q.double()
    p = log_p.exp()
    # p log p -> 0 as p -> 0 (and log q of an impossible class times p = 0 is 0).
    terms = torch.where(p > 0, p * (log_p.abs() + log_q.abs()), torch.zeros_like(p)).sum(-1)
    for normaliser in normalisers:
        terms = terms + normaliser.double().abs()
    return terms


def assert_within(actual, expected, bound, msg: str = "") -> None:
    """|actual - expected| <= bound, elementwise (bound: a number or a broadcastable tensor), in float64."""
    a = torch.as_tensor(actual).detach().double()
    e = torch.as_tensor(expected).detach().double()
    b = torch.as_tensor(bound).detach().double()
    assert a.shape == e.shape, f"{msg}: shapes {tuple(a.shape)} and {tuple(e.shape)} differ"
    error = (a - e).abs()
    excess = error - b
    if not bool((excess <= 0).all()) or not bool(torch.isfinite(a).eq(torch.isfinite(e)).all()):
        worst = int(excess.reshape(-1).nan_to_num(math.inf).argmax())
        flat = lambda t: t.expand_as(error).reshape(-1)  # noqa: E731
        raise AssertionError(
            f"{msg + ': ' if msg else ''}|actual - expected| exceeds the float32 bound at flat index {worst}: "
            f"actual {flat(a)[worst].item():.10g}, expected {flat(e)[worst].item():.10g}, "
            f"error {flat(error)[worst].item():.3g} > bound {flat(b)[worst].item():.3g} "
            f"({int((excess > 0).sum())} of {error.numel()} entries outside)"
        )
