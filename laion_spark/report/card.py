"""README.md: a Hugging Face dataset card rendered from report.json and a template.

The template (templates/card.md, package data) holds the card's shape; this module fills
its sections with markdown built from the report's numbers. The YAML header is written
with yaml.safe_dump (never by string templating), so it always parses.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from string import Template
from typing import Any

import yaml

from laion_spark.report.html import pct

TASKS = ["text-to-image", "image-to-text", "zero-shot-image-classification"]
NONE = "(none)"
_SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]


def size_category(n: int) -> str:
    for limit, name in _SIZES:
        if n < limit:
            return name
    return "n>1T"


def template() -> Template:
    text = resources.files("laion_spark.report").joinpath("templates/card.md").read_text("utf-8")
    return Template(text)


def title_of(report: dict) -> str:
    given = report["config"]["report"].get("title")
    if given:
        return str(given)
    name = os.path.basename(str(report["config"]["workdir"]).rstrip("/")) or "dataset"
    return f"{name}{' / ' + report['subset'] if report['subset'] else ''} (laion_spark)"


def license_fields(report: dict) -> dict[str, str]:
    """`license:` for the header: the configured id, the one license every sample shares,
    or `other` with a summary of the per-sample licenses."""
    given = report["config"]["report"].get("license")
    rows = report["rankings"]["license"]
    summary = ", ".join(f"{r['key']} {pct(r['share'])}" for r in rows) or "none recorded"
    details = (
        f"Per-sample licenses found on the source pages: {summary}. Images and captions "
        "remain under their owners' terms; the metadata is provided for research."
    )
    if given:
        return {"license": str(given), "license_details": details}
    keys = [r["key"] for r in rows]
    if len(keys) == 1 and keys[0] != NONE:
        return {"license": keys[0], "license_details": details}
    return {"license": "other", "license_name": "mixed-per-sample", "license_details": details}


def front_matter(report: dict) -> dict[str, Any]:
    langs = [
        r["key"]
        for r in report["rankings"]["language"]
        if r["key"] not in (NONE, "und", "unknown") and len(r["key"]) <= 3
    ]
    meta: dict[str, Any] = {"pretty_name": title_of(report)}
    meta.update(license_fields(report))
    meta.update(
        {
            "language": langs,
            "multilinguality": "monolingual" if len(langs) <= 1 else "multilingual",
            "size_categories": [size_category(int(report["population"]["rows"]))],
            "task_categories": TASKS,
            "source_datasets": ["original"],
            "annotations_creators": ["machine-generated"],
            "tags": ["image-text-pairs", "laion", "common-crawl", "clip-filtered", "laion_spark"],
        }
    )
    return meta


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str("–" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _summary(r: dict) -> str:
    pop = r["population"]
    what = f"subset `{r['subset']}`" if r["subset"] else "every extracted candidate"
    return (
        f"Image-text pairs extracted from Common Crawl and processed with laion_spark "
        f"(extract → download → CLIP embed → score → curate). This card describes {what}: "
        f"{pop['rows']:,} samples, {pop['images_ok']:,} with a downloaded image, "
        f"{pop['embedded']:,} embedded with `{r['model_id']}`. Each sample is a URL, its alt "
        f"text and metadata; images are referenced by URL and remain their owners'.\n\n"
        f"Generated {r['generated']['at']} from the Delta tables at the versions listed under "
        f"*Reproducing this card*; `index.html` beside this file shows the plots."
    )


def _build(r: dict) -> str:
    out = [
        "Stages and the settings of their latest run (the `runs` table; config digest "
        f"`{r['config']['digest']}` for this report's own config):",
        "",
        _md_table(
            ["stage", "started (UTC)", "rows in", "rows out", "config digest"],
            [[x["stage"], x["started_at"], x["rows_in"], x["rows_out"], f"`{x['config_digest']}`"] for x in r["runs"]],
        ),
        "",
        "Models:",
        "",
        f"- CLIP embeddings: `{r['model_id']}`",
        f"- toxicity: {r['toxicity']['label']} — "
        + (", ".join(f"`{k}`" for k in r["toxicity"]["models"]) or "none"),
        f"- CLIP filter thresholds: {r['thresholds']['clip']['values']} "
        f"({r['thresholds']['clip']['source']})",
    ]
    for x in r["runs"]:
        if x.get("stage_config") is None:
            continue
        out += [
            "",
            f"<details><summary>{x['stage']} settings</summary>",
            "",
            "```json",
            json.dumps(x["stage_config"], indent=2, sort_keys=True, default=str),
            "```",
            "</details>",
        ]
    return "\n".join(out)


def _statistics(r: dict) -> str:
    pop, rk = r["population"], r["rankings"]
    out = [
        _md_table(["step", "samples"], [[s["step"], s["count"]] for s in r["funnel"]["steps"]]),
        "",
        _md_table(
            ["figure", "value"],
            [
                ["tagged NSFW (zero-shot)", pct(pop["nsfw_share"])],
                ["tagged UNSURE (zero-shot)", pct(pop["unsure_share"])],
                ["drop flag", pct(pop["drop_share"])],
                ["punsafe above threshold", pct(pop["punsafe_over_share"])],
                ["toxic captions", f"{pct(pop['toxic_share'])} ({r['toxicity']['label']})"],
                ["exact image duplicates", r["duplicates"]["exact_image_duplicates"]],
                ["distinct domains", r["duplicates"]["distinct_domains"]],
            ],
        ),
        "",
        "Languages:",
        "",
        _md_table(["language", "samples", "share"], [[x["key"], x["count"], pct(x["share"])] for x in rk["language"][:10]]),
        "",
        "Top domains:",
        "",
        _md_table(["domain", "samples", "share"], [[x["key"], x["count"], pct(x["share"])] for x in rk["domain"][:10]]),
    ]
    return "\n".join(out)


def _risks(r: dict) -> str:
    pop = r["population"]
    tox = r["toxicity"]
    lines = [
        "- Web alt text and images carry the web's biases, stereotypes and explicit "
        "content. The 2021 audit of LAION-400M (Birhane, Prabhu, Kahembwe) found explicit "
        "and hateful pairs that passed the CLIP filter and the NSFW tags; treat the tags and "
        "scores below as estimates, not guarantees.",
        f"- Zero-shot tags: {pct(pop['nsfw_share'])} NSFW and {pct(pop['unsure_share'])} "
        f"UNSURE of {pop['tagged']:,} tagged samples.",
    ]
    if not pop["punsafe_n"]:
        lines.append("- No NSFW detector ran (punsafe unknown for every sample).")
    if tox["kind"] in ("word list", "mixed"):
        lines.append(
            f"- Caption toxicity ({pct(tox['rate'])}) comes from the word-list fallback, which "
            "misses toxicity without listed words and flags listed words used harmlessly."
        )
    elif tox["kind"] == "absent":
        lines.append("- Caption toxicity was not scored.")
    p = r["probes"]
    if p.get("status") == "ok":
        high = [
            t
            for t in p["terms"]
            if (p["caption"][t]["elevation"].get("nsfw_or_unsure") or 0) >= 2
            and p["caption"][t]["n"] >= 5
        ]
        if high:
            lines.append(
                "- Keyword probes: captions with "
                + ", ".join(f"`{t}`" for t in high)
                + " are tagged NSFW/UNSURE at least twice as often as the dataset as a whole."
            )
    lines.append(
        "- Images are referenced by URL: content behind a URL can change after collection, "
        "and pictures of people may be personal data."
    )
    return "\n".join(lines)


def _removal(r: dict) -> str:
    contact = r["config"]["report"].get("contact")
    lines = []
    if contact:
        lines.append(f"Send removal requests to {contact}. ")
    lines.append(
        "Maintainers remove a sample from every table and index, and keep it out of later "
        "runs, with:\n\n```\nlaion-spark takedown --kind url https://example.org/image.jpg "
        "--reason \"request #123\"\n```\n\n(kinds: url, domain, sha256, md5, sample_id). "
        f"This dataset has recorded {r['takedowns']['requests']:,} takedown requests."
    )
    return "".join(lines)


def _reproduce(r: dict) -> str:
    rows = [[n, t["version"]] for n, t in r["tables"].items()]
    return (
        _md_table(["table", "Delta version"], rows)
        + "\n\nRe-create the numbers of this card from the same table versions:\n\n```\n"
        + "laion-spark report --as-of path/to/this/report.json"
        + (f" --subset {r['subset']}" if r["subset"] else "")
        + "\n```"
    )


def render_card(report: dict) -> str:
    header = yaml.safe_dump(front_matter(report), sort_keys=False, allow_unicode=True)
    warning = (
        "> **Content warning**: web-scraped image-text data can contain explicit, hateful "
        "and otherwise harmful material; see *Known risks and limitations*."
    )
    return template().substitute(
        front_matter=header,
        title=title_of(report),
        content_warning=warning,
        summary=_summary(report),
        build=_build(report),
        statistics=_statistics(report),
        risks=_risks(report),
        removal=_removal(report),
        reproduce=_reproduce(report),
    )
