"""Query a merged index by text, image bytes or vector; results carry their metadata.

    s = Searcher.open(None, cfg)            # no Spark needed for path-based tables
    s.search("a red circle", k=10)           # -> [{"sample_id", "url", "caption", ...}]

Loading: the latest `merged` manifest row of cfg.index.name (or cfg.serve.index), its
files copied to a local cache when remote and opened with the inverted lists memory-mapped;
the faiss id -> sample_id map (`index_ids`); metadata of the indexed samples (candidates
url/text/language, embeddings similarity, scores punsafe/pwatermark when present).
Filters: taken-down samples are never returned (removed at merge and filtered here:
`refresh_takedowns` re-reads the takedowns table, which a running service does whenever
its Delta version changes, `takedowns_version`); safe mode hides punsafe above
serve.punsafe_max; language; near-identical results (cosine above serve.dedup_threshold
between result vectors, or the same URL) are collapsed to the best one.

Results are JSON-safe for browsers: `faiss_id` as a string (ids above 2^53 lose precision
in JavaScript numbers), `link` only for http/https URLs (never javascript: or data:).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd

from laion_spark import storage
from laion_spark.config import Config
from laion_spark.ids import normalize_url
from laion_spark.index import build
from laion_spark.index.paths import resolve, to_manifest
from laion_spark.lake import Lake
from laion_spark.takedown.rules import (
    RULE_COLUMNS,
    TakedownRules,
    domain_matches,
    host_of,
    rules_from_records,
    url_hash,
)

_META_COLUMNS = (
    "url",
    "text",
    "language",
    "similarity",
    "punsafe",
    "pwatermark",
    "aesthetic",
    "sha256",
)


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
        # plain lists per column: a result row is a few list lookups, not a pandas .iloc
        self._col = {c: self.meta[c].tolist() for c in ("sample_id", *_META_COLUMNS)}
        self.manifest = manifest
        self.lake = lake
        self.metric = manifest.get("metric") or cfg.index.metric
        self._clip = None
        self._lock = threading.Lock()
        self._clip_lock = threading.Lock()
        self.rules = rules
        self._blocked = self._blocked_mask(rules)
        self.takedowns_seen: int | None = None  # Delta version last applied

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
        index = _open_index(resolve(cfg, row["path"]), cfg.index.local_cache)
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
        scores = lake.read("scores", ["sample_id", "punsafe", "pwatermark", "aesthetic"])
        if scores is not None:
            meta = meta.merge(scores.drop_duplicates("sample_id"), on="sample_id", how="left")
        images = lake.read("images", ["sample_id", "sha256", "status"])
        if images is not None:
            meta = meta.merge(images.drop_duplicates("sample_id"), on="sample_id", how="left")
        for col in _META_COLUMNS:
            if col not in meta.columns:
                meta[col] = None
        version = takedowns_version(lake)
        searcher = cls(cfg, index, meta, row, lake, _load_rules(lake, cfg))
        searcher.takedowns_seen = version
        return searcher

    # ------------------------------------------------------------------ takedowns
    def _blocked_mask(self, rules: TakedownRules) -> np.ndarray:
        """Which indexed samples the rules hide: set lookups over per-row keys that are
        computed once (normalised URL, its sha256, host), so a refresh stays O(rows)."""
        n = len(self._ids)
        blocked = np.zeros(n, dtype=bool)

        def mark(keys, wanted) -> None:
            if wanted:
                blocked[:] |= np.fromiter((k in wanted for k in keys), dtype=bool, count=n)

        mark(self._col["sample_id"], rules.sample_ids)
        if rules.urls or rules.url_hashes or rules.domains:
            keys = self._url_keys()
            mark(keys["url"], rules.urls)
            mark(keys["hash"], rules.url_hashes)
            if rules.domains:
                blocked |= np.fromiter(
                    (bool(h) and domain_matches(h, rules.domains) for h in keys["host"]),
                    dtype=bool,
                    count=n,
                )
        if rules.sha256:
            mark((str(h).lower() if _text(h) else None for h in self._col["sha256"]), rules.sha256)
        return blocked

    def _url_keys(self) -> dict[str, list]:
        if getattr(self, "_keys", None) is None:
            urls = [_text(u) for u in self._col["url"]]
            norm = [normalize_url(u) if u else None for u in urls]
            self._keys = {
                "url": norm,
                "hash": [url_hash(u) if u else None for u in norm],
                "host": [host_of(u) if u else "" for u in urls],
            }
        return self._keys

    def refresh_takedowns(self, version: int | None = None) -> int:
        """Re-read the takedowns table and hide what it lists; returns how many indexed
        samples are hidden. Safe while queries run (the mask is swapped in one step)."""
        rules = _load_rules(self.lake, self.cfg)
        blocked = self._blocked_mask(rules)
        self.rules, self._blocked = rules, blocked
        if version is not None:
            self.takedowns_seen = version
        return int(blocked.sum())

    @property
    def taken_down(self) -> np.ndarray:
        return self._blocked

    @property
    def has_nsfw_scores(self) -> bool:
        """Whether any indexed sample has a punsafe score (else safe mode filters nothing)."""
        return bool(self.meta["punsafe"].notna().any())

    def languages(self, top: int = 50) -> list[str]:
        """The most frequent languages of the indexed samples (for the page's filter)."""
        if getattr(self, "_languages", None) is None:
            counts = self.meta["language"].dropna().astype(str).value_counts()
            self._languages = [str(x) for x in counts.index[:top]]
        return self._languages

    # ------------------------------------------------------------------ queries
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def clip(self):
        if self._clip is None:
            with self._clip_lock:
                if self._clip is None:
                    from laion_spark.models.clip import load_clip  # written by the embed stage

                    self._clip = load_clip(self.cfg.embed)
        return self._clip

    def warm(self) -> None:
        """Load the model and run one text query, so the first real query is fast."""
        if self.index.ntotal:
            self.search("warm up", k=1, safe_mode=False, dedup=False)

    def query_vector(
        self, query: str | bytes | np.ndarray, query_language: str | None = None
    ) -> np.ndarray:
        """text | image bytes | decoded PIL image | vector -> the normalised query vector;
        a text query goes through its language's text tower (`query_language`, None =
        detected)."""
        if _is_pil(query):
            clip = self.clip()
            q = np.asarray(
                clip.encode_image_tensor(clip.preprocess(query.convert("RGB")).unsqueeze(0)),
                dtype="float32",
            ).reshape(1, -1)
        elif isinstance(query, np.ndarray | list):
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
        query,
        k: int = 10,
        safe_mode: bool = True,
        language: str | None = None,
        dedup: bool = True,
        query_language: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[dict]:
        """Results `offset`..`offset + k` (best first) as dicts: sample_id, faiss_id (a
        string), score, url, link, caption, language, similarity, punsafe, pwatermark,
        aesthetic. k is capped by serve.max_k unless `limit` (subset generation) says more.
        `language` filters results; `query_language` (a code or group; None = detected)
        picks the text tower of a text query."""
        cap = self.cfg.serve.max_k if limit is None else int(limit)
        k = max(1, min(int(k), cap))
        want = k + max(0, int(offset))
        q = self.query_vector(query, query_language)
        fetch = min(max(4 * want, want + 20), max(self.ntotal, 1))
        while True:
            with self._lock:  # faiss search is thread safe, parameter changes are not
                scores, labels, vecs = self._search(q, fetch, dedup)
            out = self._filter(scores, labels, vecs, want, safe_mode, language, dedup)
            if len(out) >= want or fetch >= self.ntotal:
                return out[offset:]
            fetch = min(fetch * 4, self.ntotal)

    def _search(self, q: np.ndarray, n: int, reconstruct: bool = True):
        if reconstruct:
            try:
                d, i, r = self.index.search_and_reconstruct(q, n)
                return d[0], i[0], r[0]
            except RuntimeError:  # index type without reconstruction
                pass
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
        blocked = self._blocked  # one consistent mask for this query
        col = self._col
        for j, r in enumerate(rows):
            if r < 0 or blocked[r]:
                continue
            punsafe = _num(col["punsafe"][r])
            if safe_mode:
                if punsafe is None and not serve.unscored_is_safe:
                    continue
                if punsafe is not None and punsafe > serve.punsafe_max:
                    continue
            lang = _text(col["language"][r])
            if language and (lang or "") != language:
                continue
            url = _text(col["url"][r])
            if dedup:
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
                    "sample_id": col["sample_id"][r],
                    "faiss_id": str(int(labels[j])),
                    "score": float(scores[j]),
                    "url": url,
                    "link": web_link(url),
                    "caption": _text(col["text"][r]),
                    "language": lang,
                    "similarity": _num(col["similarity"][r]),
                    "punsafe": punsafe,
                    "pwatermark": _num(col["pwatermark"][r]),
                    "aesthetic": _num(col["aesthetic"][r]),
                }
            )
            if len(out) >= k:
                break
        return out

    def image(self, sample_id: str) -> tuple[bytes, str] | None:
        """(image bytes, format) of a sample from the images table, None when absent."""
        hit = (self.meta["sample_id"] == sample_id).to_numpy()
        if not hit.any() or bool(self._blocked[hit].any()):
            return None
        df = self.lake.read("images", ["sample_id", "image", "format"], ("sample_id", sample_id))
        if df is None or df.empty or df["image"].iloc[0] is None:
            return None
        return bytes(df["image"].iloc[0]), str(df["format"].iloc[0] or "jpeg")

    def info(self) -> dict:
        """What /health shows: no absolute path (the index file relative to the workdir,
        or only its file name when it lives elsewhere)."""
        keys = ("index_name", "factory", "count", "dim", "recall_at_10", "metric", "size_bytes")
        out = {k: _plain(self.manifest.get(k)) for k in keys}
        path = to_manifest(self.cfg, resolve(self.cfg, self.manifest.get("path")) or "")
        out["path"] = (
            path if not path.startswith("/") and "://" not in path else path.rsplit("/", 1)[-1]
        )
        out["ntotal"] = self.ntotal
        return out


def _load_rules(lake: Lake, cfg: Config) -> TakedownRules:
    df = lake.read("takedowns", list(RULE_COLUMNS))
    if df is None:
        return TakedownRules()
    records = df.to_dict("records")
    for r in records:
        for key, v in r.items():
            if isinstance(v, np.ndarray):
                r[key] = v.tolist()
            elif isinstance(v, float) and np.isnan(v):
                r[key] = None
    return rules_from_records(records, cfg.takedown.pdq_max_distance)


def takedowns_version(lake: Lake) -> int | None:
    """Delta version of the takedowns table (None when absent). Path-based tables: one
    delta-rs log listing (milliseconds), so a service can poll it every second."""
    if lake.cfg.tables.database:
        return lake.tables.version("takedowns")
    try:
        from deltalake import DeltaTable

        return int(DeltaTable(lake.location("takedowns")).version())
    except Exception:  # not created yet
        return None


def web_link(url) -> str | None:
    """`url` when it is an http(s) URL a page may link to; None otherwise (javascript:,
    data:, relative or malformed URLs never become links)."""
    if not isinstance(url, str) or len(url) > 4096:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if any(ord(c) < 32 for c in url):
        return None
    return url.strip()


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover (pillow is a core dependency)
        return False
    return isinstance(x, Image.Image)


def _text(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return str(v)


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
