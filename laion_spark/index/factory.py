"""Which faiss index fits a memory budget for n vectors of dimension d.

The rule (autofaiss-style, written down so users can predict it):

1. Flat (exact search) when n <= index.flat_max_vectors and the raw vectors plus id maps
   fit the budget: n * (4d + 48) bytes.
2. Otherwise IVF (inverted lists, nprobe tuned at merge) with the most accurate codes that
   fit the budget: raw vectors (`IVF...,Flat`, n * (4d + 8) bytes), else 1 byte per
   dimension (`IVF...,SQ8`, n * (d + 8)), else PQ with OPQ rotation as below.
   Same nlist / coarse-quantiser rule for all three. PQ with OPQ rotation:
   - nlist = the power of two nearest 4 * sqrt(n), at most train_points / 39 (faiss wants
     >= 39 training points per centroid) and at least 16;
   - coarse quantiser: HNSW32 when nlist >= 1024 (fast centroid lookup at large nlist),
     else a flat quantiser;
   - PQ m = the largest divisor of d among (d/2, ..., 8) (codes of m bytes) whose
     estimated size fits the budget: n * (m + 8) bytes of codes+ids, plus the coarse
     centroids (nlist * (4d + 264) with HNSW), the OPQ matrix (4d^2) and PQ centroids
     (256 * 4d), plus 10% slack. Bigger codes = better recall, so we take the most that fit.
   - PQ codes use 8 bits per sub-quantiser, or 4 bits when the training sample is below
     256 * 39 points (8-bit codebooks would be under-trained on small sets);
   - Factory: OPQ{m}_{d},IVF{nlist}[_HNSW32],PQ{m}x{bits}np (the rotation keeps all d dims;
     `np` turns off faiss's polysemous training, on by default in index_factory: a
     simulated-annealing pass over the codebooks that only polysemous search uses and
     that took > 5 min for PQ128 on 50k vectors, while the whole rest trains in 20 s).
3. If even m = 8 does not fit, raise with the smallest budget that would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SLACK = 1.10


@dataclass(frozen=True)
class FactoryChoice:
    factory: str
    kind: str  # flat | ivfpq
    estimated_bytes: int
    nlist: int = 0
    m: int = 0
    reason: str = ""


def flat_bytes(n: int, d: int) -> int:
    # float32 codes + IDMap2's id array and reverse hash map
    return int(n * (4 * d + 48) * SLACK)


def ivfpq_bytes(n: int, d: int, nlist: int, m: int, hnsw: bool, nbits: int = 8) -> int:
    coarse = nlist * (4 * d + (264 if hnsw else 0))
    code = math.ceil(m * nbits / 8)
    return int((n * (code + 8) + coarse + 4 * d * d + (1 << nbits) * 4 * d) * SLACK)


def choose_nlist(n: int, train_points: int) -> int:
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    cap = max(16, train_points // 39)
    while nlist > cap:
        nlist //= 2
    return max(16, nlist)


def pq_sizes(d: int) -> list[int]:
    return [m for m in range(d // 2, 7, -1) if d % m == 0 and m <= 256]


def choose_factory(
    n: int,
    d: int,
    budget_bytes: int,
    flat_max_vectors: int = 100_000,
    train_points: int | None = None,
) -> FactoryChoice:
    """The factory string for n vectors of dimension d within budget_bytes (see module doc)."""
    if n <= flat_max_vectors and flat_bytes(n, d) <= budget_bytes:
        return FactoryChoice("IDMap2,Flat", "flat", flat_bytes(n, d), reason="fits as exact Flat")
    train_points = min(n, train_points or n)
    nlist = choose_nlist(n, train_points)
    hnsw = nlist >= 1024
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    # the most accurate codes that fit: raw float32, then 1 byte per dimension, then PQ
    for codes, per_vec in (("Flat", 4 * d), ("SQ8", d)):
        est = int((n * (per_vec + 8) + nlist * (4 * d + (264 if hnsw else 0))) * SLACK)
        if est <= budget_bytes:
            return FactoryChoice(
                f"{coarse},{codes}",
                "ivf" + codes.lower(),
                est,
                nlist=nlist,
                reason=f"IVF with {codes} codes fits the budget",
            )
    nbits = 8 if train_points >= 256 * 39 else 4
    for m in pq_sizes(d):
        est = ivfpq_bytes(n, d, nlist, m, hnsw, nbits)
        if est <= budget_bytes:
            return FactoryChoice(
                f"OPQ{m}_{d},{coarse},PQ{m}x{nbits}np",
                "ivfpq",
                est,
                nlist=nlist,
                m=m,
                reason=f"largest PQ code ({m} bytes) within the budget",
            )
    smallest = min(pq_sizes(d) or [8])
    need = ivfpq_bytes(n, d, nlist, smallest, hnsw, nbits)
    raise ValueError(
        f"index.memory_budget_mb: {n} vectors of dim {d} need at least {need / 2**20:.0f} MiB "
        f"(IVF{nlist},PQ{smallest}); budget is {budget_bytes / 2**20:.0f} MiB"
    )
