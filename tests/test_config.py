"""Config: YAML + overrides, and fast failures that name the key."""

import pytest

from laion_spark.config import Config, load_config, parse_override
from laion_spark.settings import ConfigError


def test_local_config_loads_with_defaults():
    cfg = load_config("local")
    assert isinstance(cfg, Config)
    assert cfg.spark.master == "local[2]"
    assert cfg.download.opt_out_tags == ["noai", "noimageai", "noindex", "noimageindex"]
    assert cfg.tables_root.endswith("demo-workdir/tables")


@pytest.mark.parametrize("name", ["databricks", "emr"])
def test_cluster_configs_load(name):
    cfg = load_config(name)
    assert cfg.spark.master is None


def test_overrides_are_typed():
    cfg = load_config(
        "local",
        ["download.threads=7", "curate.clip_thresholds.en=0.3", "download.allow_networks=[127.0.0.1/32]"],
    )
    assert cfg.download.threads == 7
    assert cfg.curate.clip_thresholds == {"en": pytest.approx(0.3)}
    assert cfg.download.allow_networks == ["127.0.0.1/32"]


def test_deprecated_keys_still_work_and_say_what_replaced_them(caplog):
    with caplog.at_level("WARNING", logger="laion_spark"):
        cfg = load_config(
            None, ["clip.batch_size=7", "clip.threshold_en=0.3", "clip.threshold_multi=0.2"]
        )
    assert cfg.embed.batch_size == 7
    assert cfg.curate.clip_thresholds == {"en": pytest.approx(0.3), "*": pytest.approx(0.2)}
    said = caplog.text
    assert "clip.threshold_en is deprecated; use curate.clip_thresholds.en" in said
    assert "config section clip: is deprecated; it is now embed:" in said
    with pytest.raises(ConfigError, match=r"embed\.device"):
        load_config(None, ["clip.device=tpu"])
    with pytest.raises(ConfigError, match="curate filter `clip_filter`"):
        load_config(None, ["clip.subset=mine"])


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"download\.treads"):
        load_config("local", ["download.treads=3"])
    with pytest.raises(ConfigError, match="unknown key bogus"):
        load_config("local", ["bogus=1"])


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"download\.threads: expected an integer"):
        load_config("local", ["download.threads=many"])
    with pytest.raises(ConfigError, match=r"spark\.delta_from"):
        load_config("local", ["spark.delta_from=parquet"])


def test_bad_override_syntax_and_unknown_conf(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("download.threads")
    with pytest.raises(ConfigError, match="no config named"):
        load_config("nonexistent")
    bad = tmp_path / "bad.yaml"
    bad.write_text("download: [1, 2]\n")
    with pytest.raises(ConfigError, match="download: expected a mapping"):
        load_config(str(bad))
