"""laion_spark: LAION-style image-text datasets on Spark + Delta Lake."""

__version__ = "0.1.0"
