"""What the index stage reads: the embeddings to index, taken-down ids, existing id maps."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from laion_spark.config import Config
from laion_spark.lake import read_rows
from laion_spark.models.clip import embedding_model_id
from laion_spark.takedown.rules import is_taken_down, load_rules


def index_dir(cfg: Config, name: str | None = None) -> str:
    return f"{cfg.workdir_path.rstrip('/')}/indexes/{name or cfg.index.name}"


def taken_down_ids(tables) -> DataFrame | None:
    """sample_ids removed by takedowns: listed and resolved ids, plus candidates matching a
    listed URL (or URL hash) or domain, plus images whose sha256 is listed. None when nothing
    is taken down."""
    rules = load_rules(tables)
    if not rules:
        return None
    spark = tables.spark
    parts = []
    if rules.sample_ids:
        parts.append(
            spark.createDataFrame([(s,) for s in sorted(rules.sample_ids)], "sample_id string")
        )
    if (rules.urls or rules.url_hashes or rules.domains) and tables.exists("candidates"):
        bc = spark.sparkContext.broadcast(rules)

        @F.udf("boolean")
        def _blocked(url):
            return is_taken_down(bc.value, url)

        parts.append(tables.read("candidates").where(_blocked("url")).select("sample_id"))
    if rules.sha256 and tables.exists("images"):
        parts.append(
            tables.read("images")
            .where(F.lower("sha256").isin(sorted(rules.sha256)))
            .select("sample_id")
        )
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.distinct()


def source_embeddings(cfg: Config, tables) -> tuple[DataFrame, str | None]:
    """(sample_id, vector) of embeddings to index: this model, non-null vectors, the
    configured subset only, nothing taken down."""
    ic = cfg.index
    model_id = embedding_model_id(cfg, tables, ic.model_id, "index.model_id")
    emb = tables.read("embeddings").where(F.col(ic.vector_column).isNotNull())
    if model_id is not None:
        emb = emb.where(F.col("model_id") == model_id)
    emb = emb.select("sample_id", F.col(ic.vector_column).alias("vector"))
    if ic.subset:
        keep = tables.read("subsets").where(F.col("subset") == ic.subset).select("sample_id")
        emb = emb.join(keep.distinct(), "sample_id", "left_semi")
    gone = taken_down_ids(tables)
    if gone is not None:
        emb = emb.join(gone, "sample_id", "left_anti")
    return emb, model_id


def taken_down_local(tables) -> set[str]:
    """`taken_down_ids` of local tables, read in this process (delta-rs): the same rules."""
    rules = load_rules(tables)
    if not rules:
        return set()
    out = set(rules.sample_ids)
    if (rules.urls or rules.url_hashes or rules.domains) and tables.exists("candidates"):
        got = read_rows(tables.location("candidates"), ["sample_id", "url"]).to_pydict()
        pairs = zip(got["sample_id"], got["url"], strict=True)
        out |= {s for s, u in pairs if is_taken_down(rules, u)}
    if rules.sha256 and tables.exists("images"):
        got = read_rows(tables.location("images"), ["sample_id", "sha256"]).to_pydict()
        pairs = zip(got["sample_id"], got["sha256"], strict=True)
        out |= {s for s, h in pairs if h and h.lower() in rules.sha256}
    return out


def taken_down_faiss_ids(tables, index_name: str) -> set[int]:
    """faiss ids of `index_name` recorded in takedown resolutions: they stay known after the
    takedown deleted their `index_ids` rows, so merge can still remove them."""
    if not tables.exists("takedowns"):
        return set()
    if tables.local("takedowns"):
        got = read_rows(tables.location("takedowns"), ["faiss_ids"]).to_pydict()
        ids = got.get("faiss_ids", [])
        return {int(i) for m in ids for k, v in (m or ()) if k == index_name for i in (v or ())}
    df = tables.read("takedowns")
    if "faiss_ids" not in df.columns:
        return set()
    rows = df.select(F.col("faiss_ids").getItem(index_name).alias("ids")).collect()
    return {int(i) for r in rows for i in (r["ids"] or ())}
