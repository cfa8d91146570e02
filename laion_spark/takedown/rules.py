"""Takedown rules every stage respects: a removed URL, domain or sample never comes back.

The `takedowns` table (written by `laion-spark takedown`, laion_spark.takedown.request) holds
one row per request: (kind, value) with kind in url | domain | sample_id | sha256 | md5 |
pdq, and the request's resolution (sample_ids, url_hashes, sha256, pdq, faiss ids, shards
of every matched sample), recorded before anything was deleted. Rules built from it block:
- the listed value itself (a url, a domain and its subdomains, a sample_id, a hash);
- every resolved sample_id, and the URL of every resolved sample (kept as the sha256 of the
  normalised URL, `url_hash`: after a purge the table holds no URL in clear);
- for content kinds (sha256, md5, pdq), the sha256 of every matched stored image, so the
  same bytes found again at another URL are refused at download.
Extract and download call `exclude_taken_down` on what they are about to write; download
also drops images whose hash is listed (`taken_down_hashes`). Takedown lists are small
(thousands), so they are collected to the driver and broadcast as sets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.ids import normalize_url

KINDS = ("url", "domain", "sample_id", "sha256", "md5", "pdq")
CONTENT_KINDS = ("sha256", "md5", "pdq")
HASHED_PREFIX = "sha256:"  # a url request's value after purge: sha256 of the normalised URL
# columns of `takedowns` the rules read (those that exist: tables written before the
# resolution columns existed still load)
RULE_COLUMNS = ("kind", "value", "sample_ids", "url_hashes", "sha256", "pdq", "max_distance")


@dataclass
class TakedownRules:
    urls: set[str] = field(default_factory=set)
    url_hashes: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    sample_ids: set[str] = field(default_factory=set)
    sha256: set[str] = field(default_factory=set)
    md5: set[str] = field(default_factory=set)
    pdq: dict[str, int] = field(default_factory=dict)  # listed hash -> max distance

    def __bool__(self) -> bool:
        return bool(
            self.urls
            or self.url_hashes
            or self.domains
            or self.sample_ids
            or self.sha256
            or self.md5
            or self.pdq
        )

    def blocks_urls(self) -> bool:
        return bool(self.urls or self.url_hashes or self.domains or self.sample_ids)


def url_hash(url: str) -> str:
    """sha256 hex of the normalised URL: how a URL is kept once its takedown is purged."""
    return hashlib.sha256(normalize_url(url).encode("utf-8", "surrogatepass")).hexdigest()


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def domain_matches(host: str, domains: set[str]) -> bool:
    """`host` is a listed domain or a subdomain of one."""
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def _add_value(rules: TakedownRules, kind: str | None, raw: str | None, distance: int) -> None:
    value = (raw or "").strip()
    if not value:
        return
    if kind == "url":
        if value.startswith(HASHED_PREFIX):
            rules.url_hashes.add(value[len(HASHED_PREFIX) :].lower())
        else:
            rules.urls.add(normalize_url(value))
    elif kind == "domain":
        rules.domains.add(value.lower().lstrip("."))
    elif kind == "sample_id":
        rules.sample_ids.add(value)
    elif kind == "sha256":
        rules.sha256.add(value.lower())
    elif kind == "md5":
        rules.md5.add(value.lower())
    elif kind == "pdq":
        v = value.lower()
        rules.pdq[v] = max(rules.pdq.get(v, 0), distance)


def rules_from_records(records: Iterable[Mapping], default_distance: int = 31) -> TakedownRules:
    """Rules from `takedowns` rows as mappings (columns missing from old tables are fine)."""
    rules = TakedownRules()
    for r in records:
        kind = r.get("kind")
        dist = r.get("max_distance")
        _add_value(rules, kind, r.get("value"), int(dist) if dist else default_distance)
        rules.sample_ids.update(s for s in (r.get("sample_ids") or ()) if s)
        rules.url_hashes.update(h.lower() for h in (r.get("url_hashes") or ()) if h)
        if kind in CONTENT_KINDS:
            rules.sha256.update(h.lower() for h in (r.get("sha256") or ()) if h)
    return rules


def rules_from_rows(rows: Iterable[tuple[str | None, str | None]]) -> TakedownRules:
    """Rules from (kind, value) pairs alone."""
    return rules_from_records({"kind": k, "value": v} for k, v in rows)


def load_rules(tables) -> TakedownRules:
    default = tables.cfg.takedown.pdq_max_distance
    if tables.local("takedowns"):  # read by delta-rs: no Spark job
        from deltalake.exceptions import TableNotFoundError

        from laion_spark.lake import read_rows

        try:
            rows = read_rows(tables.location("takedowns"), list(RULE_COLUMNS))
        except TableNotFoundError:
            return TakedownRules()
        return rules_from_records(rows.to_pylist(), default)
    if not tables.exists("takedowns"):
        return TakedownRules()
    df = tables.read("takedowns")
    cols = [c for c in RULE_COLUMNS if c in df.columns]
    return rules_from_records((r.asDict() for r in df.select(*cols).collect()), default)


def is_taken_down(rules: TakedownRules, url: str | None, sample_id: str | None = None) -> bool:
    if sample_id and sample_id in rules.sample_ids:
        return True
    if url:
        if rules.urls or rules.url_hashes:
            n = normalize_url(url)
            if n in rules.urls:
                return True
            if rules.url_hashes and url_hash(n) in rules.url_hashes:
                return True
        if rules.domains and domain_matches(host_of(url), rules.domains):
            return True
    return False


def exclude_taken_down(
    tables, df: DataFrame, url_col: str = "url", id_col: str = "sample_id"
) -> DataFrame:
    """`df` without rows whose URL, domain or sample_id was taken down."""
    rules = load_rules(tables)
    if not rules.blocks_urls():
        return df
    bc = df.sparkSession.sparkContext.broadcast(rules)

    @F.udf("boolean")
    def _blocked(url, sid):
        return is_taken_down(bc.value, url, sid)

    id_expr = F.col(id_col) if id_col in df.columns else F.lit(None).cast("string")
    return df.where(~_blocked(F.col(url_col), id_expr))


def taken_down_hashes(tables) -> tuple[set[str], set[str]]:
    """(sha256 set, md5 set) of images that must never be stored again."""
    rules = load_rules(tables)
    return rules.sha256, rules.md5


def taken_down_pdq(tables) -> dict[str, int]:
    """Listed PDQ hashes -> the Hamming distance each request matches within."""
    return load_rules(tables).pdq
