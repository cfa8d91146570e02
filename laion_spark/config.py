"""The whole typed config: YAML in conf/ plus `--set key=value` overrides.

    cfg = load_config("local", ["download.threads=64"])

Unknown keys and bad values raise ConfigError naming the dotted key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laion_spark.curate.settings import CurateSettings
from laion_spark.download.settings import DownloadSettings
from laion_spark.dpo.settings import DpoSettings
from laion_spark.embed.settings import EmbedSettings
from laion_spark.export.settings import ExportSettings
from laion_spark.extract.settings import ExtractSettings
from laion_spark.index.settings import IndexSettings
from laion_spark.report.settings import ReportSettings
from laion_spark.score.settings import ScoreSettings
from laion_spark.serve.settings import ServeSettings
from laion_spark.settings import ConfigError, from_dict, require
from laion_spark.takedown.settings import TakedownSettings

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger(__name__)

# Keys renamed when stage, folder and config section were made to agree (clip -> embed, the
# CLIP filter folded into curate). Old configs keep working; each use logs how to update it.
_MOVED_KEYS = {
    "clip.threshold_en": "curate.clip_thresholds.en",
    "clip.threshold_multi": "curate.clip_thresholds.*",
}


@dataclass
class SparkSettings:
    # None = use the active session / spark-submit's master (clusters); local[N] for laptops
    master: str | None = "local[2]"
    app_name: str = "laion_spark"
    # where scripts/setup.sh put the Delta jars; empty/missing -> spark.jars.packages
    jars_dir: str = "~/.cache/laion_spark/jars"
    # "jars": local cache, "packages": resolve io.delta via Ivy, "cluster": platform provides Delta
    delta_from: str = "jars"
    conf: dict[str, str] = field(default_factory=dict)
    # local sessions map the driver JVM's class archive that scripts/setup.sh builds (about
    # 4 s off the JVM start and 5 s off its first queries, laion_spark/jvm.py) when it exists
    class_archive: bool = True
    # local sessions: the driver JVM compiles with the JIT's quick tier only (C1,
    # -XX:TieredStopAtLevel=1): small runs spend seconds less compiling (docs/benchmarks.md)
    quick_jit: bool = True

    def validate(self, prefix: str) -> None:
        require(
            self.delta_from in ("jars", "packages", "cluster"),
            f"{prefix}.delta_from",
            f"must be jars, packages or cluster, not {self.delta_from!r}",
        )


@dataclass
class TablesSettings:
    # local/path mode: Delta tables under this folder (default {workdir}/tables);
    # may be s3://..., dbfs:/..., abfss://...
    root: str | None = None
    # catalog mode (Databricks/Unity, Glue): tables are `<database>.<name>` instead of paths
    database: str | None = None


S3_JARS = ("auto", "always", "never")


@dataclass
class StorageSettings:
    """Object storage seen by both sides: Spark (Hadoop's s3a) and Python (fsspec's s3fs,
    delta-rs). Credentials never go here: both read the usual AWS chain (environment,
    profile, instance role)."""

    # hadoop-aws + the AWS SDK modules it needs (cached by scripts/setup.sh) on the classpath
    # of a session we build locally: auto = when tables.root or the workdir is s3a:// / s3://
    # (clusters such as EMR and Databricks bring their own S3 filesystem); always; never
    s3_jars: str = "auto"
    # an S3-compatible server instead of AWS (MinIO, Ceph, a test's moto): http(s)://host:port
    s3_endpoint: str | None = None
    # the bucket's region, set explicitly so no client looks it up (us-east-1 when unset and
    # an endpoint is given)
    s3_region: str | None = None
    # bucket in the path (http://host/bucket/key) rather than the host name; None = true
    # exactly when s3_endpoint is set (what S3-compatible servers expect)
    s3_path_style: bool | None = None

    def validate(self, prefix: str) -> None:
        require(
            self.s3_jars in S3_JARS,
            f"{prefix}.s3_jars",
            f"must be one of {', '.join(S3_JARS)}, not {self.s3_jars!r}",
        )
        require(
            self.s3_endpoint is None or self.s3_endpoint.startswith(("http://", "https://")),
            f"{prefix}.s3_endpoint",
            f"must start with http:// or https://, not {self.s3_endpoint!r}",
        )


@dataclass
class Config:
    workdir: str = "./demo-workdir"
    spark: SparkSettings = field(default_factory=SparkSettings)
    tables: TablesSettings = field(default_factory=TablesSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    download: DownloadSettings = field(default_factory=DownloadSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    curate: CurateSettings = field(default_factory=CurateSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    takedown: TakedownSettings = field(default_factory=TakedownSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    dpo: DpoSettings = field(default_factory=DpoSettings)

    @property
    def workdir_path(self) -> str:
        w = self.workdir
        return w if "://" in w or w.startswith("dbfs:") else os.path.abspath(os.path.expanduser(w))

    @property
    def tables_root(self) -> str:
        return self.tables.root or f"{self.workdir_path.rstrip('/')}/tables"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _pop_dotted(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        cur = cur.get(p)
        if not isinstance(cur, dict):
            return False, None
    if parts[-1] not in cur:
        return False, None
    return True, cur.pop(parts[-1])


def _migrate(data: dict[str, Any]) -> None:
    """Rewrite deprecated keys in place (logging each), so old configs keep working."""
    for old, new in _MOVED_KEYS.items():
        found, value = _pop_dotted(data, old)
        if found:
            log.warning("config key %s is deprecated; use %s", old, new)
            head, _, last = new.rpartition(".")
            section = data
            for p in head.split("."):
                section = section.setdefault(p, {})
            section[last] = value
    found, subset = _pop_dotted(data, "clip.subset")
    if found:
        raise ConfigError(
            f"clip.subset: the CLIP filter is now the curate filter `clip_filter`; to name its "
            f"subset {subset!r}, add `curate.definitions.{subset}: {{kind: clip_threshold}}` and "
            f"list {subset} in curate.filters"
        )
    if "clip" in data:
        old = data.pop("clip")
        log.warning("config section clip: is deprecated; it is now embed: (same keys)")
        if not isinstance(old, dict):
            raise ConfigError(f"clip: expected a mapping, got {old!r}")
        merged = dict(old)
        merged.update(data.get("embed") or {})
        data["embed"] = merged


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_conf_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        return p
    candidate = CONF_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in CONF_DIR.glob("*.yaml"))
        raise ConfigError(f"no config named {name_or_path!r}; known: {', '.join(known)}")
    return candidate


def load_config(
    name_or_path: str | None = "local",
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Load conf/<name>.yaml (or a path), apply `extra` (a dict) and `key=value` overrides."""
    data: dict[str, Any] = {}
    if name_or_path:
        path = resolve_conf_path(name_or_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    for k, v in (extra or {}).items():
        _set_dotted(data, k, v)
    for o in overrides or []:
        _set_dotted(data, *parse_override(o))
    _migrate(data)
    cfg = from_dict(Config, data)
    # the S3 endpoint/region reach every Python-side client (s3fs, delta-rs) through the
    # environment, set here so commands that start no Spark session (search, serve) see it
    from laion_spark import storage

    storage.configure(cfg.storage)
    return cfg
