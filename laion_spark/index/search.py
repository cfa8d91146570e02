"""Query a merged index by text, image bytes or vector; results carry their metadata.

    s = Searcher.open(None, cfg)            # no Spark needed for path-based tables
    s.search("a red circle", k=10)           # -> [{"sample_id", "url", "caption", ...}]

Loading: the latest `merged` manifest row of cfg.index.name (or cfg.serve.index), its
files copied to a local cache when remote and opened with the inverted lists memory-mapped;
the faiss id -> sample_id map (`index_ids`); metadata of the indexed samples (candidates
url/text/language, embeddings similarity, scores punsafe/pwatermark when present).
Filters: taken-down samples are never returned (removed at merge and filtered here, so a
takedown after the merge is honoured at once on reload); safe mode hides punsafe above
serve.punsafe_max; language; near-identical results (cosine above serve.dedup_threshold
between result vectors, or the same URL) are collapsed to the best one.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.index import build
from laion_spark.lake import Lake
from laion_spark.takedown.rules import TakedownRules, is_taken_down, rules_from_rows


class Searcher:
    def __init__(
        self,
        cfg: Config,
        index,
        meta: pd.DataFrame,
        manifest: dict,
        lake: Lake,
        rules: TakedownRules,
    ):
        self.cfg = cfg
        self.index = index
        self.meta = meta.sort_values("faiss_id").reset_index(drop=True)
        self._ids = self.meta["faiss_id"].to_numpy("int64")
        self.manifest = manifest
        self.lake = lake
        self.rules = rules
        self.metric = manifest.get("metric") or cfg.index.metric
        self._clip = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def open(cls, spark_or_none, cfg: Config, tables=None, name: str | None = None) -> Searcher:
        name = name or cfg.serve.index or cfg.index.name
        lake = Lake(cfg, spark_or_none, tables)
        man = lake.read(
            "index_manifest",
            [
                "index_name",
                "shard",
                "kind",
                "path",
                "factory",
                "model_id",
                "count",
                "dim",
                "recall_at_10",
                "metric",
                "params",
                "created_at",
                "size_bytes",
                "build_seconds",
            ],
        )
        if man is None or man.empty:
            raise FileNotFoundError(
                f"no index manifest under {cfg.tables_root}; run the index stage"
            )
        man = man[(man["index_name"] == name) & (man["kind"] == "merged")]
        if man.empty:
            raise FileNotFoundError(f"index {name!r} has no merged index; run merge_index")
        row = man.sort_values("created_at").iloc[-1].to_dict()
        index = _open_index(row["path"], cfg.index.local_cache)
        params = json.loads(row["params"] or "{}")
        build.search_params(index, params)
        ids = lake.read("index_ids", ["index_name", "sample_id", "faiss_id"], ("index_name", name))
        meta = ids[["sample_id", "faiss_id"]]
        cand = lake.read("candidates", ["sample_id", "url", "text", "language"])
        if cand is not None:
            meta = meta.merge(cand.drop_duplicates("sample_id"), on="sample_id", how="left")
        emb = lake.read("embeddings", ["sample_id", "model_id", "similarity"])
        if emb is not None and not emb.empty:
            if row.get("model_id"):
                emb = emb[emb["model_id"] == row["model_id"]]
            meta = meta.merge(
                emb[["sample_id", "similarity"]].drop_duplicates("sample_id"),
                on="sample_id",
                how="left",
            )
        scores = lake.read("scores", ["sample_id", "punsafe", "pwatermark"])
        if scores is not None:
            meta = meta.merge(scores.drop_duplicates("sample_id"), on="sample_id", how="left")
        images = lake.read("images", ["sample_id", "sha256", "status"])
        if images is not None:
            meta = meta.merge(images.drop_duplicates("sample_id"), on="sample_id", how="left")
        for col in ("url", "text", "language", "similarity", "punsafe", "pwatermark", "sha256"):
            if col not in meta.columns:
                meta[col] = None
        rules = _load_rules(lake)
        meta["taken_down"] = [
            is_taken_down(rules, u, s) or (h is not None and str(h).lower() in rules.sha256)
            for u, s, h in zip(meta["url"], meta["sample_id"], meta["sha256"], strict=True)
        ]
        return cls(cfg, index, meta, row, lake, rules)

    # ------------------------------------------------------------------ queries
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def clip(self):
        if self._clip is None:
            from laion_spark.models.clip import load_clip  # written by the embed stage

            self._clip = load_clip(self.cfg.embed)
        return self._clip

    def query_vector(
        self, query: str | bytes | np.ndarray, query_language: str | None = None
    ) -> np.ndarray:
        if isinstance(query, np.ndarray | list):
            q = np.asarray(query, dtype="float32").reshape(1, -1)
        elif isinstance(query, str):
            from laion_spark.models.text_tower import encode_queries  # the language's tower

            q = encode_queries(self.cfg, [query], [query_language]).reshape(1, -1)
        elif isinstance(query, bytes | bytearray):
            q = np.asarray(self.clip().encode_images([bytes(query)]), dtype="float32").reshape(
                1, -1
            )
        else:
            raise TypeError(
                f"query must be text, image bytes or a vector, not {type(query).__name__}"
            )
        if q.shape[1] != self.index.d:
            raise ValueError(f"query has dimension {q.shape[1]}, index has {self.index.d}")
        if not np.isfinite(q).all():
            raise ValueError("query vector has NaN or inf")
        if self.metric == "ip":
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        return np.ascontiguousarray(q, dtype="float32")

    def search(
        self,
        query: str | bytes | np.ndarray,
        k: int = 10,
        safe_mode: bool = True,
        language: str | None = None,
        dedup: bool = True,
        query_language: str | None = None,
    ) -> list[dict]:
        """Top-k results (best first) as dicts: sample_id, faiss_id, score, url, caption,
        language, similarity, punsafe, pwatermark. `language` filters results;
        `query_language` (a code or group; None = detected) picks the text tower of a text
        query."""
        k = max(1, min(int(k), self.cfg.serve.max_k))
        q = self.query_vector(query, query_language)
        fetch = min(max(4 * k, k + 20), max(self.ntotal, 1))
        while True:
            with self._lock:  # faiss search is thread safe, parameter changes are not
                scores, labels, vecs = self._search(q, fetch)
            out = self._filter(scores, labels, vecs, k, safe_mode, language, dedup)
            if len(out) >= k or fetch >= self.ntotal:
                return out
            fetch = min(fetch * 4, self.ntotal)

    def _search(self, q: np.ndarray, n: int):
        try:
            d, i, r = self.index.search_and_reconstruct(q, n)
            return d[0], i[0], r[0]
        except RuntimeError:  # index type without reconstruction
            d, i = self.index.search(q, n)
            return d[0], i[0], None

    def _rows(self, labels: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._ids, labels)
        pos = np.clip(pos, 0, max(len(self._ids) - 1, 0))
        ok = (labels >= 0) & (len(self._ids) > 0)
        ok &= self._ids[pos] == labels if len(self._ids) else False
        return np.where(ok, pos, -1)

    def _filter(self, scores, labels, vecs, k, safe_mode, language, dedup) -> list[dict]:
        serve = self.cfg.serve
        rows = self._rows(labels)
        out: list[dict] = []
        kept_vecs: list[np.ndarray] = []
        seen_urls: set[str] = set()
        for j, r in enumerate(rows):
            if r < 0:
                continue
            m = self.meta.iloc[r]
            if m["taken_down"]:
                continue
            punsafe = _num(m["punsafe"])
            if safe_mode:
                if punsafe is None and not serve.unscored_is_safe:
                    continue
                if punsafe is not None and punsafe > serve.punsafe_max:
                    continue
            if language and (m["language"] or "") != language:
                continue
            if dedup:
                url = m["url"]
                if url and url in seen_urls:
                    continue
                if vecs is not None:
                    v = vecs[j] / max(float(np.linalg.norm(vecs[j])), 1e-12)
                    if any(float(v @ u) > serve.dedup_threshold for u in kept_vecs):
                        continue
                    kept_vecs.append(v)
                if url:
                    seen_urls.add(url)
            out.append(
                {
                    "sample_id": m["sample_id"],
                    "faiss_id": int(labels[j]),
                    "score": float(scores[j]),
                    "url": m["url"],
                    "caption": m["text"],
                    "language": m["language"],
                    "similarity": _num(m["similarity"]),
                    "punsafe": punsafe,
                    "pwatermark": _num(m["pwatermark"]),
                }
            )
            if len(out) >= k:
                break
        return out

    def image(self, sample_id: str) -> tuple[bytes, str] | None:
        """(image bytes, format) of a sample from the images table, None when absent."""
        hit = self.meta["sample_id"] == sample_id
        if not hit.any() or bool(self.meta.loc[hit, "taken_down"].iloc[0]):
            return None
        df = self.lake.read("images", ["sample_id", "image", "format"], ("sample_id", sample_id))
        if df is None or df.empty or df["image"].iloc[0] is None:
            return None
        return bytes(df["image"].iloc[0]), str(df["format"].iloc[0] or "jpeg")

    def info(self) -> dict:
        keys = (
            "index_name",
            "factory",
            "count",
            "dim",
            "recall_at_10",
            "metric",
            "path",
            "size_bytes",
        )
        out = {k: _plain(self.manifest.get(k)) for k in keys}
        out["ntotal"] = self.ntotal
        return out


def _load_rules(lake: Lake) -> TakedownRules:
    df = lake.read("takedowns", ["kind", "value"])
    if df is None:
        return TakedownRules()
    return rules_from_rows(zip(df["kind"], df["value"], strict=True))


def _open_index(path: str, cache: str):
    local = storage.local_copy(path, cache)
    ivf = path[: -len(".index")] + ".ivfdata"
    if storage.exists(ivf):
        storage.local_copy(ivf, cache)  # lands next to the local .index copy
    return build.read_served_index(local)


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v if isinstance(v, str | int | float | bool) else str(v)
