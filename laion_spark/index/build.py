"""faiss pieces: train an empty index, add vectors with ids, (de)serialise, tune, merge."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np


def metric_type(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def gpu_count() -> int:
    try:
        return faiss.get_num_gpus()
    except AttributeError:  # faiss-cpu build
        return 0


def train_index(factory: str, xt: np.ndarray, metric: str, use_gpu: str = "auto") -> faiss.Index:
    """An empty index trained on `xt` (the driver's sample); k-means on GPU when present."""
    d = xt.shape[1]
    index = faiss.index_factory(d, factory, metric_type(metric))
    if index.is_trained:
        return index
    xt = np.ascontiguousarray(xt, dtype="float32")
    if use_gpu == "auto" and gpu_count() > 0:
        # the heavy part of training is the coarse k-means: run its assignment on the GPUs
        ivf = faiss.extract_index_ivf(index)
        clustering = faiss.IndexFlat(ivf.d, metric_type(metric))
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(clustering)
    index.train(xt)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype="uint8"))


def is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def as_matrix(vectors, d: int | None = None) -> np.ndarray:
    x = np.stack([np.asarray(v, dtype="float32") for v in vectors]) if len(vectors) else None
    if x is None:
        return np.zeros((0, d or 0), dtype="float32")
    return np.ascontiguousarray(x, dtype="float32")


def search_params(index: faiss.Index, params: dict) -> None:
    """Apply {"nprobe": .., "efSearch": ..} to any wrapped index (OPQ, IVF, HNSW)."""
    if not params or not is_ivf(index):
        return
    ps = faiss.ParameterSpace()
    if "nprobe" in params:
        ps.set_index_parameter(index, "nprobe", int(params["nprobe"]))
    if "efSearch" in params:
        quantizer = faiss.extract_index_ivf(index).quantizer
        if "HNSW" in type(faiss.downcast_index(quantizer)).__name__:
            ps.set_index_parameter(index, "quantizer_efSearch", int(params["efSearch"]))


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k over queries (ids; -1 = empty slot)."""
    hits = 0
    total = 0
    for f, t in zip(found, truth, strict=True):
        tt = {int(x) for x in t[:k] if x >= 0}
        if not tt:
            continue
        hits += len(tt & {int(x) for x in f[:k] if x >= 0})
        total += len(tt)
    return hits / total if total else 1.0


def tune_nprobe(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    max_nprobe: int,
    ef_search: int,
    k: int = 10,
) -> tuple[dict, float]:
    """Smallest power-of-two nprobe reaching `target` recall@k (else the largest tried)."""
    if not is_ivf(index):
        _, found = index.search(queries, k)
        return {}, recall_at_k(found, truth, k)
    nlist = faiss.extract_index_ivf(index).nlist
    best: tuple[dict, float] = ({}, 0.0)
    nprobe = 1
    while True:
        params = {"nprobe": nprobe, "efSearch": max(ef_search, 2 * nprobe)}
        search_params(index, params)
        _, found = index.search(queries, k)
        best = (params, recall_at_k(found, truth, k))
        if best[1] >= target or nprobe >= min(nlist, max_nprobe):
            return best
        nprobe *= 2


def merge_shards_ondisk(
    trained: faiss.Index, shard_files: list[str], out_index: str, remove: np.ndarray
) -> faiss.Index:
    """IVF shards -> one index whose inverted lists live in `<out_index>.ivfdata` (mmap).

    Shards are read memory-mapped so their total may exceed RAM (faiss merge_ondisk);
    taken-down ids are then removed from the on-disk lists.
    """
    ivfdata = (
        out_index[: -len(".index")] + ".ivfdata"
        if out_index.endswith(".index")
        else out_index + ".ivfdata"
    )
    lists = []
    keep = []
    for fname in shard_files:
        shard = faiss.read_index(fname, faiss.IO_FLAG_MMAP)
        ivf = faiss.extract_index_ivf(shard)
        lists.append(ivf.invlists)
        ivf.own_invlists = False
        keep.append(shard)  # keep the mmap alive until the merge is done
    ivf_out = faiss.extract_index_ivf(trained)
    assert trained.ntotal == 0, "merge needs the empty trained index"
    invlists = faiss.OnDiskInvertedLists(ivf_out.nlist, ivf_out.code_size, ivfdata)
    vec = faiss.InvertedListsPtrVector()
    for il in lists:
        vec.push_back(il)
    ntotal = invlists.merge_from_multiple(vec.data(), vec.size(), False)
    trained.ntotal = ivf_out.ntotal = ntotal
    ivf_out.replace_invlists(invlists, True)
    invlists.this.disown()
    if len(remove):
        removed = ivf_out.remove_ids(faiss.IDSelectorBatch(np.asarray(remove, dtype="int64")))
        trained.ntotal = ivf_out.ntotal
        del removed
    faiss.write_index(trained, out_index)
    del keep
    return trained


def merge_shards_flat(
    shard_files: list[str], metric: str, d: int, remove: np.ndarray
) -> faiss.Index:
    """Flat shards concatenated into one IDMap2,Flat index (small sets only)."""
    out = faiss.index_factory(d, "IDMap2,Flat", metric_type(metric))
    for fname in shard_files:
        shard = faiss.read_index(fname)
        n = shard.ntotal
        if n == 0:
            continue
        ids = faiss.vector_to_array(faiss.downcast_index(shard).id_map)
        x = faiss.downcast_index(shard).index.reconstruct_n(0, n)
        out.add_with_ids(x, ids)
    if len(remove):
        out.remove_ids(faiss.IDSelectorBatch(np.asarray(remove, dtype="int64")))
    return out


def read_served_index(path: str) -> faiss.Index:
    """Open a merged index for serving: IVF lists memory-mapped from the same folder."""
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    if not os.path.exists(path[: -len(".index")] + ".ivfdata"):
        flags = 0
    return faiss.read_index(path, flags)


def dumps(params: dict) -> str:
    return json.dumps(params, sort_keys=True)
