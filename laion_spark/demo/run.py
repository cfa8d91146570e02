"""`laion-spark demo`: a generated crawl through every stage, locally, end to end.

1. generate web pages whose <img> links point at generated images (plus junk links
   and failures a real crawl has) and write them as real WARC + WAT files;
2. serve the images from a loopback HTTP server (fixed port, so URLs and therefore
   sample_ids are identical on every run: a second run adds nothing);
3. run extract -> download -> embed -> score -> curate -> index through Spark, with
   Delta tables under the workdir, export the curated subset as WebDataset shards, then
   search the index;
4. CLIP-DPO on a share of the downloaded images: the tiny captioner samples responses,
   tiny-clip ranks them, the rules pick preference pairs, exported for TRL;
5. print the per-stage summary and SQL a user can paste.

A third of the pages are in German, French, Spanish or Russian (captions from templates in
those languages, with wrong captions injected as in the English ones); their captions go
through a tiny multilingual text tower (tiny-mclip, distilled from tiny-clip once, cached),
and the summary shows what the CLIP filter kept and removed per language group.

The crawl plants known rates of three properties (DEMO_RATES) and the score stage runs the
demo's heads (laion_spark.score.demo_heads, trained once on generated data and cached), so
punsafe, pwatermark and aesthetic are filled and safe mode visibly hides results. The
"unsafe" category is a generated STAND-IN (hazard-striped backgrounds), not NSFW content.
"""

from __future__ import annotations

import os
import random
import time

from laion_spark.config import Config
from laion_spark.demo.synthetic import (
    CAPTION_LANGUAGES,
    STANDIN_UNSAFE_NOTE,
    Sample,
    make_samples,
)

DEFAULT_DEMO_PORT = 18765
DEMO_SEED = 7
# planted in the crawl: the stand-in unsafe category, watermarks, low generated quality
# (high enough that the tests' 24-page demo holds several of each)
DEMO_RATES = {"unsafe_rate": 0.15, "watermark_rate": 0.2, "low_quality_rate": 0.25}


def demo_port() -> int:
    """Fixed (not random) so image URLs, hence sample_ids, are the same on every run."""
    return int(os.environ.get("LAION_SPARK_DEMO_PORT", DEFAULT_DEMO_PORT))


def demo_samples(n_pages: int, seed: int = DEMO_SEED) -> list[Sample]:
    """The generated samples behind the demo's pages; sample i is served as /img/{i}.jpg."""
    return make_samples(n_pages * 2, seed=seed, mismatch_rate=0.2, **DEMO_RATES)


def demo_pages(
    n_pages: int, base: str, seed: int = DEMO_SEED
) -> tuple[list[dict], dict[str, bytes], set[str]]:
    """Pages for the crawl writer, image bodies by server path, and paths served with noai."""
    rng = random.Random(seed)
    samples = demo_samples(n_pages, seed)
    bodies: dict[str, bytes] = {}
    noai: set[str] = set()
    pages = []
    it = iter(samples)
    for p in range(n_pages):
        images = []
        for _ in range(rng.choice([1, 2, 2, 3])):
            s = next(it, None)
            if s is None:
                break
            path = f"/img/{s.index}.jpg"
            bodies[path] = s.jpeg(size=96)
            images.append((f"{base}{path}", s.caption))
        # what real pages also have: a dead link, an opted-out image, junk the rules drop
        if p % 10 == 3:
            images.append((f"{base}/img/missing-{p}.jpg", "a picture that is not there anymore"))
        if p % 25 == 5:
            noai_path = f"/img/noai-{p}.jpg"
            bodies[noai_path] = samples[p].jpeg(size=96)
            noai.add(noai_path)
            images.append((f"{base}{noai_path}", "an artist's image opted out of AI training"))
        if p % 7 == 0:
            images.append((f"{base}/static/logo.svg", "company logo in vector format"))
            images.append(("data:image/png;base64,iVBORw0KGgo=", "inline pixel image here"))
            images.append((f"{base}/img/spacer.jpg", "ok"))
        pages.append(
            {
                "url": f"{base}/page/{p}.html",
                "images": images,
                "license": "https://creativecommons.org/licenses/by/4.0/" if p % 4 == 0 else None,
                "samples": {f"{base}/img/{s.index}.jpg": s for s in page_samples(images, samples)},
            }
        )
    pages += multilingual_pages(n_pages // 2, base, bodies, seed)
    return pages, bodies, noai


def page_samples(images: list[tuple[str, str]], samples: list) -> list:
    """The generated samples behind a page's image links (by their /img/<index>.jpg path)."""
    by_path = {f"/img/{s.index}.jpg": s for s in samples}
    return [by_path[p] for u, _ in images if (p := u[u.find("/img/") :]) in by_path]


def multilingual_pages(n: int, base: str, bodies: dict[str, bytes], seed: int) -> list[dict]:
    """`n` pages in the demo's other languages (one language per page, in turn), 1-3 images
    each, a fifth of the captions describing another image."""
    pages = []
    per_lang = {
        lang: iter(make_samples(n * 3, seed=seed * 100 + i, mismatch_rate=0.2, languages=(lang,)))
        for i, lang in enumerate(CAPTION_LANGUAGES)
    }
    rng = random.Random(seed + 1)
    for p in range(n):
        lang = CAPTION_LANGUAGES[p % len(CAPTION_LANGUAGES)]
        images, samples = [], {}
        for _ in range(rng.choice([1, 2, 2, 3])):
            s = next(per_lang[lang])
            path = f"/img/{lang}-{s.index}.jpg"
            bodies[path] = s.jpeg(size=96)
            images.append((f"{base}{path}", s.caption))
            samples[f"{base}{path}"] = s
        pages.append(
            {
                "url": f"{base}/{lang}/page/{p}.html",
                "lang": lang,
                "title": {"de": "Bilder", "fr": "Images", "es": "Imágenes", "ru": "Картинки"}[lang],
                "images": images,
                "samples": samples,
            }
        )
    return pages


def demo_config(cfg: Config) -> Config:
    """The demo's overrides: allow the loopback image server, small images, tiny CLIP, and
    (multilingual extra installed) the tiny multilingual tower for the multi/nolang groups."""
    import importlib.util

    from laion_spark.models.text_tower import TINY_TOWER
    from laion_spark.models.tiny_clip import TINY_NAME

    cfg.download.allow_networks = sorted({*cfg.download.allow_networks, "127.0.0.1/32"})
    cfg.download.image_size = min(cfg.download.image_size, 96)
    # CLIP-DPO on a quarter of the downloaded images (chosen by sample_id: the same each run)
    cfg.dpo.pool.from_images = True
    cfg.dpo.pool.images_fraction = min(cfg.dpo.pool.images_fraction, 0.25)
    multilingual = all(importlib.util.find_spec(m) for m in ("transformers", "tokenizers"))
    if multilingual and not cfg.embed.text_towers and cfg.embed.model == TINY_NAME:
        if not cfg.embed.pretrained:
            cfg.embed.text_towers = {"multi": TINY_TOWER, "nolang": TINY_TOWER}
    return cfg


def _text_tower_step(cfg: Config) -> None:
    """Distil the tiny multilingual tower once (cached), before Spark workers need it."""
    if not cfg.embed.text_towers:
        print("[demo] one text tower (CLIP's): install laion_spark[multilingual] for the others")
        return
    from laion_spark.models.clip import load_clip
    from laion_spark.models.text_tower import load_text_towers

    t0 = time.time()
    clip = load_clip(cfg.embed)
    towers = load_text_towers(cfg.embed, clip)
    for group, tower in sorted(towers.items()):
        print(
            f"[demo] text tower for {group}: {tower.model_id} (threshold "
            f"{tower.threshold(group):.3f}) in {time.time() - t0:.0f}s"
        )


def run_demo(cfg: Config, pages: int = 200) -> list:
    from laion_spark.demo.crawl import write_synthetic_crawl
    from laion_spark.demo.image_server import ImageServer
    from laion_spark.pipeline import run_pipeline
    from laion_spark.session import get_spark
    from laion_spark.tables import Tables

    cfg = demo_config(cfg)
    t0 = time.time()
    workdir = cfg.workdir_path
    os.makedirs(workdir, exist_ok=True)
    port = demo_port()
    base = f"http://127.0.0.1:{port}"
    page_list, bodies, noai = demo_pages(pages, base)
    crawl = write_synthetic_crawl(os.path.join(workdir, "crawl"), page_list)
    print(f"[demo] wrote {len(page_list)} pages as {crawl['warc']} and {crawl['wat']}")
    _text_tower_step(cfg)
    _score_heads(cfg)
    spark = get_spark(cfg)
    tables = Tables(spark, cfg)
    with ImageServer(port=port) as server:
        for path, body in bodies.items():
            headers = {"X-Robots-Tag": "noai"} if path in noai else None
            server.add(path, body, "image/jpeg", headers=headers)
        print(f"[demo] serving {len(bodies)} images at {server.base_url}")
        results = run_pipeline(spark, cfg, tables, extract={"inputs": [crawl["wat"]]})

    _print_groups(results)
    results.append(_export_subset(spark, cfg, tables))
    _planted_vs_found(spark, tables, page_list, samples=demo_samples(pages))
    _search_examples(spark, cfg, tables)
    _dpo_pairs(spark, cfg, tables)
    _write_report(spark, cfg, tables)
    _print_next_steps(cfg)
    print(f"[demo] finished in {time.time() - t0:.0f}s; tables under {tables.root}")
    return results


def _write_report(spark, cfg: Config, tables) -> None:
    """The dataset report of what the demo built (index.html, README.md card, report.json)."""
    from laion_spark.extras import MissingExtra

    try:
        from laion_spark.report.build import build_report

        result = build_report(spark, cfg, tables)
    except MissingExtra as e:  # matplotlib absent: the demo still runs
        print(f"[demo] no report: {e}")
        return
    same = ", tables unchanged since it was made" if result.reused else ""
    print(f"[demo] report: {result.files['index.html']} ({result.seconds:.1f}s{same})")


DEMO_EXPORT_SUBSET = "clip_filter"


def demo_export_dir(cfg: Config) -> str:
    return os.path.join(cfg.workdir_path, "export", DEMO_EXPORT_SUBSET)


def _export_subset(spark, cfg: Config, tables):
    """The curated subset as WebDataset shards, the way a trainer would read it."""
    from datetime import UTC, datetime

    from laion_spark.export.stage import run
    from laion_spark.stage import record_run

    started = datetime.now(UTC)
    target = demo_export_dir(cfg)
    result = run(spark, cfg, tables, subset=DEMO_EXPORT_SUBSET, to=target, fmt="webdataset")
    record_run(tables, cfg, result, {"subset": DEMO_EXPORT_SUBSET, "to": target}, started)
    print(
        f"[demo] exported subset {DEMO_EXPORT_SUBSET!r} as WebDataset: {result.rows_out} samples "
        f"in {result.notes.get('shards')} shard(s) under {target}"
    )
    return result


def _score_heads(cfg: Config) -> None:
    """Point every score model the config leaves unset at the demo's (trained once, cached)."""
    from laion_spark.score.demo_heads import configure_demo_heads

    t = time.time()
    heads = configure_demo_heads(cfg)
    how = f"trained in {time.time() - t:.0f}s" if heads.trained else "loaded from cache"
    ev = heads.metrics
    print(
        f"[demo] score heads {how} ({heads.directory}); held-out accuracy: "
        f"stand-in unsafe {ev['nsfw']['accuracy']:.2f}, watermark {ev['watermark']['accuracy']:.2f}"
    )
    print(f"[demo] NOTE punsafe here is a {STANDIN_UNSAFE_NOTE}")


def _planted_vs_found(spark, tables, page_list: list[dict], samples: list[Sample]) -> None:
    """One line: what the crawl planted among the scored images and what the scores flag."""
    from pyspark.sql import functions as F

    by_path = {f"/img/{s.index}.jpg": s for s in samples}
    cands = tables.read("candidates").select("sample_id", "url")
    rows = tables.read("scores").join(cands, "sample_id").select("url", F.col("flags")).collect()
    # sample i is served at <base>/img/i.jpg (demo_pages); noai copies are not planted ones
    planted = [by_path[p] for r in rows if (p := _img_path(r["url"])) in by_path]
    n_unsafe = sum(s.unsafe for s in planted)
    n_wm = sum(s.watermark for s in planted)
    f_unsafe = sum("nsfw" in (r["flags"] or []) for r in rows)
    f_wm = sum("watermark" in (r["flags"] or []) for r in rows)
    print(
        f"[demo] scored {len(rows)} images: planted {n_unsafe} stand-in unsafe / {n_wm} "
        f"watermarked; flagged nsfw {f_unsafe} / watermark {f_wm}"
    )


def _img_path(url: str | None) -> str:
    return url[url.find("/img/") :] if url and "/img/" in url else ""


def _print_groups(results: list) -> None:
    """What the CLIP filter kept and removed per language group (from curate's notes)."""
    notes = next((r.notes for r in results if r.stage == "curate"), {})
    groups = sorted(
        {k.rsplit("_", 1)[1] for k in notes if k.startswith("clip_filter_kept_")}
        | {k.rsplit("_", 1)[1] for k in notes if k.startswith("clip_filter_removed_")}
    )
    parts = [
        f"{g} kept {notes.get(f'clip_filter_kept_{g}', 0)} removed "
        f"{notes.get(f'clip_filter_removed_{g}', 0)}"
        for g in groups
    ]
    if parts:
        print(f"\n[demo] clip_filter per language group: {'; '.join(parts)}")


def _search_examples(spark, cfg: Config, tables) -> None:
    from laion_spark.index.search import Searcher

    searcher = Searcher.open(spark, cfg, tables)
    queries = ["a red circle on the left", "a blue square at the top"]
    if cfg.embed.text_towers:  # other languages go through the multilingual tower
        queries += ["un cercle rouge à gauche", "ein blaues Quadrat oben"]
    for q in queries:
        print(f"\n[demo] search: {q!r}")
        for hit in searcher.search(q, k=3):
            print(f"   {hit.get('score', 0):.3f}  {hit.get('caption')!r:60}  {hit.get('url')}")


def _dpo_pairs(spark, cfg: Config, tables) -> None:
    """Export the CLIP-DPO pairs the pipeline mined for TRL and show one."""
    from pyspark.sql import functions as F

    from laion_spark.dpo.export import export_dpo

    out = os.path.join(cfg.workdir_path, "dpo")
    n = export_dpo(spark, cfg, tables, out)
    print(f"\n[demo] dpo: {n} preference pairs in TRL's vision DPO format at {out}")
    if n:
        pair = tables.read("dpo_pairs").orderBy(F.desc("margin"), "pair_id").first()
        print(f"   prompt:   {pair['prompt']!r}")
        print(f"   chosen:   {pair['chosen']!r}  (clip {pair['chosen_score']:.3f})")
        print(f"   rejected: {pair['rejected']!r}  (clip {pair['rejected_score']:.3f})")


def _print_next_steps(cfg: Config) -> None:
    wd = f" --set workdir={cfg.workdir}" if cfg.workdir != "./demo-workdir" else ""
    print("\nTry these (SQL over the Delta tables; each table is a view by its name):")
    for q in [
        "SELECT status, count(*) AS n FROM images GROUP BY status ORDER BY n DESC",
        "SELECT c.text, round(e.similarity, 3) AS sim, s.punsafe FROM candidates c "
        "JOIN embeddings e USING (sample_id) LEFT JOIN scores s USING (sample_id) "
        "ORDER BY sim DESC LIMIT 5",
        "SELECT subset, count(*) AS n, sum(repeat) AS draws FROM subsets GROUP BY subset",
        "SELECT prompt, chosen, rejected, round(margin, 3) AS margin FROM dpo_pairs LIMIT 5",
    ]:
        print(f'  .venv/bin/laion-spark sql{wd} "{q}"')
    print(f"  .venv/bin/laion-spark tables{wd}")
    print(f"  .venv/bin/laion-spark serve{wd}     # web page to search the index")
    print(
        f"  .venv/bin/laion-spark export{wd} --subset {DEMO_EXPORT_SUBSET} --format laion "
        f"--to ./{DEMO_EXPORT_SUBSET}_embeddings   # LAION-format embeddings release"
    )
