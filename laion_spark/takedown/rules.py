"""Takedown rules every stage respects: a removed URL, domain or sample never comes back.

The `takedowns` table (written by `laion-spark takedown`, laion_spark.takedown.request) holds
rows of (kind, value) with kind in url | domain | sample_id | sha256 | md5. Extract and
download call `exclude_taken_down` on what they are about to write; download also drops
images whose hash is listed (`taken_down_hashes`). Takedown lists are small (thousands),
so they are collected to the driver and broadcast as sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.ids import normalize_url

KINDS = ("url", "domain", "sample_id", "sha256", "md5")


@dataclass
class TakedownRules:
    urls: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    sample_ids: set[str] = field(default_factory=set)
    sha256: set[str] = field(default_factory=set)
    md5: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.urls or self.domains or self.sample_ids or self.sha256 or self.md5)


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def domain_matches(host: str, domains: set[str]) -> bool:
    """`host` is a listed domain or a subdomain of one."""
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def rules_from_rows(rows: Iterable[tuple[str | None, str | None]]) -> TakedownRules:
    """Rules from (kind, value) pairs as stored in the `takedowns` table."""
    rules = TakedownRules()
    for kind, raw in rows:
        value = (raw or "").strip()
        if kind == "url":
            rules.urls.add(normalize_url(value))
        elif kind == "domain":
            rules.domains.add(value.lower().lstrip("."))
        elif kind == "sample_id":
            rules.sample_ids.add(value)
        elif kind == "sha256":
            rules.sha256.add(value.lower())
        elif kind == "md5":
            rules.md5.add(value.lower())
    return rules


def load_rules(tables) -> TakedownRules:
    if not tables.exists("takedowns"):
        return TakedownRules()
    rows = tables.read("takedowns").select("kind", "value").collect()
    return rules_from_rows((r["kind"], r["value"]) for r in rows)


def is_taken_down(rules: TakedownRules, url: str | None, sample_id: str | None = None) -> bool:
    if sample_id and sample_id in rules.sample_ids:
        return True
    if url:
        if normalize_url(url) in rules.urls:
            return True
        if rules.domains and domain_matches(host_of(url), rules.domains):
            return True
    return False


def exclude_taken_down(tables, df: DataFrame, url_col: str = "url", id_col: str = "sample_id") -> DataFrame:
    """`df` without rows whose URL, domain or sample_id was taken down."""
    rules = load_rules(tables)
    if not (rules.urls or rules.domains or rules.sample_ids):
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
