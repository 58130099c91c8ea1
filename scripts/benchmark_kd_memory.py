"""Peak CPU memory of one KD loss forward + backward on a wide vocabulary.

    python scripts/benchmark_kd_memory.py [--vocab 32000 --tokens 2048 --loss kl]

Each measurement runs in a fresh subprocess and reads `resource.getrusage(RUSAGE_SELF).ru_maxrss`
(tracemalloc does not see torch's allocations): the number reported is the peak resident memory
added by the loss, above what holding the student logits (with their gradient) and the teacher
logits costs. The losses' rows-at-once budget is `hfkd.objective.losses.CHUNK_ELEMENTS`; `--no_chunking` sets it
so high that everything runs in one piece, for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(vocab: int, tokens: int, loss: str, chunking: bool) -> dict:
    import torch

    from hfkd.objective import losses

    if not chunking:
        losses.CHUNK_ELEMENTS = 2**62
    torch.manual_seed(0)
    batch = 4
    student = torch.randn(batch, tokens // batch + 1, vocab, requires_grad=True)
    teacher = torch.randn(batch, tokens // batch + 1, vocab)
    mask = torch.ones(batch, tokens // batch, dtype=torch.bool)
    # Causal-LM shape: positions shifted by one, a non-contiguous view like the trainer's.
    s, t = student[:, :-1], teacher[:, :-1]
    student.grad = torch.zeros_like(student)  # the gradient buffer is part of the baseline
    kib = 1024 if sys.platform != "darwin" else 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
    started = time.perf_counter()
    value = losses.KD_LOSSES[loss](s, t, temperature=2.0, mask=mask, reduction="sum")
    value.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
    copy = tokens * vocab * 4
    return {"loss": loss, "chunking": chunking, "vocab": vocab, "tokens": tokens,
            "added_peak_mib": round((peak - before) / 2**20, 1), "one_copy_mib": round(copy / 2**20, 1), "seconds": round(seconds, 2),
            "value": float(value.detach())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--loss", default="kl")
    parser.add_argument("--no_chunking", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.vocab, args.tokens, args.loss, not args.no_chunking)))
        return
    for chunking in (False, True):
        command = [sys.executable, __file__, "--child", "--vocab", str(args.vocab), "--tokens", str(args.tokens),
                   "--loss", args.loss] + ([] if chunking else ["--no_chunking"])
        # A fixed mmap threshold returns freed large blocks to the OS at once; glibc's adaptive one
        # keeps some resident, which makes the peak depend on allocation history.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20), "OMP_NUM_THREADS": "1"}
        print(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip())


if __name__ == "__main__":
    main()
