"""The export formats: name -> ShardWriter subclass ("module:Class", imported when used).

A new format is one line here plus its writer class (laion_spark.export.writers.ShardWriter).
"""

from __future__ import annotations

import importlib

FORMATS: dict[str, str] = {
    "webdataset": "laion_spark.export.writers:WebDatasetWriter",
    "laion": "laion_spark.export.writers:LaionWriter",
    "parquet": "laion_spark.export.writers:ParquetWriter",
    "uids": "laion_spark.export.writers:UidsWriter",
}


def writer_class(name: str):
    """The ShardWriter subclass registered as format `name`."""
    if name not in FORMATS:
        raise KeyError(f"unknown export format {name!r}; formats: {', '.join(FORMATS)}")
    module, cls = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), cls)
