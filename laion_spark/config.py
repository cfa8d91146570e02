"""The whole typed config: YAML in conf/ plus `--set key=value` overrides.

    cfg = load_config("local", ["download.threads=64"])

Unknown keys and bad values raise ConfigError naming the dotted key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from laion_spark.clip.settings import ClipConfig
from laion_spark.curate.settings import CurateConfig
from laion_spark.download.settings import DownloadConfig
from laion_spark.extract.settings import ExtractConfig
from laion_spark.index.settings import IndexConfig
from laion_spark.safety.settings import ScoreConfig
from laion_spark.serve.settings import ServeConfig
from laion_spark.settings import ConfigError, from_dict, require

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


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


@dataclass
class Config:
    workdir: str = "./demo-workdir"
    spark: SparkSettings = field(default_factory=SparkSettings)
    tables: TablesSettings = field(default_factory=TablesSettings)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

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
    return from_dict(Config, data)
