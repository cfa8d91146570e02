"""Every model the project runs loads through here: one device rule, one precision rule, one
per-worker cache, one way to name a model (its id).

    models.device      resolve_device / resolve_precision / torch threads, `cached` (per process)
    models.clip        open_clip models (hub tag, local file/dir, tiny-clip) -> LoadedClip
    models.tiny_clip   the project's small CLIP, trained once on generated data and cached
    models.heads       score heads over CLIP embeddings (NSFW, watermark, aesthetic, toxicity)
    models.watermark   LAION's image watermark classifier (timm) over image bytes

Spark reuses Python workers, so a model loaded through `cached` is loaded once per worker
process, not once per task.
"""
