"""index.html: one self-contained page from report.json's numbers and the drawn plots.

No script, no stylesheet or font from elsewhere, plots inline as base64 PNG, and a
Content-Security-Policy that forbids any request but `data:` images: the page works from
file:// and offline and cannot leak that it was opened. Every number on it is in
report.json (formatted here, never computed here). Unsafe content is never shown: counts
and rates only; thumbnails only when asked for and only of samples build.safe_thumbnails
let through.
"""

from __future__ import annotations

from html import escape
from typing import Any

from laion_spark.report.plots import Plot

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 2rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.muted{color:#666;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}.card{border:1px solid #ddd;border-radius:6px;
padding:.5rem .8rem;min-width:9rem}.card b{display:block;font-size:1.3rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem}
img.plot{display:block;margin:.5rem 0;max-width:100%;height:auto}
.thumbs img{margin:2px;border:1px solid #ccc}
"""


def num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.1f}"
    return escape(str(v))


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}%"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are already escaped/formatted; the first `left` columns are left-aligned."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(plot: Plot | None) -> str:
    if plot is None:
        return ""
    import base64

    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<img class="plot" id="plot-{plot.name}" alt="{escape(plot.title)}" '
        f'width="{plot.width}" height="{plot.height}" src="data:image/png;base64,{data}">'
    )


def _ranking(rows: list[dict], label: str) -> str:
    return _table([label, "samples", "share"], [[escape(r["key"]), num(r["count"]), pct(r["share"])] for r in rows])


def render_html(report: dict, plots: dict[str, Plot], thumbs: list[dict] | None = None) -> str:
    r = report
    pop, fun = r["population"], r["funnel"]
    title = "Dataset report" + (f": subset {r['subset']}" if r["subset"] else ": all candidates")
    parts: list[str] = []
    add = parts.append
    add(f"<h1>{escape(title)}</h1>")
    add(
        f'<p class="muted">generated {escape(r["generated"]["at"])} · embeddings model '
        f'{num(r["model_id"])} · config digest {num(r["config"]["digest"])}'
        + (f" · as of {escape(str(r['as_of']))}" if r["as_of"] else "")
        + "</p>"
    )
    add(
        '<p class="note">This page shows counts and rates only. It never shows an image or a '
        "caption of a sample tagged or scored unsafe.</p>"
    )
    tox = r["toxicity"]
    cards = [
        ("samples", num(pop["rows"])),
        ("images downloaded", num(pop["images_ok"])),
        ("embedded", num(pop["embedded"])),
        ("tagged NSFW", pct(pop["nsfw_share"])),
        ("tagged UNSURE", pct(pop["unsure_share"])),
        ("punsafe > threshold", pct(pop["punsafe_over_share"])),
        ("toxic captions", pct(pop["toxic_share"])),
        ("exact image duplicates", num(r["duplicates"]["exact_image_duplicates"])),
    ]
    add('<div class="cards">' + "".join(f'<div class="card"><b>{v}</b>{escape(k)}</div>' for k, v in cards) + "</div>")

    add("<h2>Tables read</h2>")
    add(
        _table(
            ["table", "Delta version", "location"],
            [[escape(n), num(t["version"]), escape(t["location"])] for n, t in r["tables"].items()],
        )
    )

    add("<h2>Funnel</h2>")
    add(_img(plots.get("funnel")))
    add(_table(["step", "samples", "read from"], [[escape(s["step"]), num(s["count"]), escape(s["source"])] for s in fun["steps"]]))
    ex = fun["extract"]
    add(
        f'<p class="muted">extract: {num(ex["files"])} files, {num(ex["records"])} records, '
        f'{num(ex["pages"])} pages, {num(ex["pairs"])} pairs, {num(ex["bad_records"])} bad records</p>'
    )
    add(_img(plots.get("rejections")))
    add(_table(["rejection reason", "links"], [[escape(k), num(v)] for k, v in ex["rejected"].items()]))
    add(_table(["download status", "images"], [[escape(k), num(v)] for k, v in fun["download_status"].items()]))
    add(_table(["subset", "samples", "draws"], [[escape(k), num(v["samples"]), num(v["draws"])] for k, v in fun["subsets"].items()]))

    rk = r["rankings"]
    add("<h2>Languages</h2>")
    add(_img(plots.get("languages")))
    add(_ranking(rk["language_group"], "language group") + _ranking(rk["language"], "language"))
    add("<h2>Domains</h2>")
    add(f'<p class="muted">{num(r["duplicates"]["distinct_domains"])} distinct image domains</p>')
    add(_img(plots.get("domains")))
    add(_ranking(rk["domain"], "domain"))
    add("<h2>Licenses</h2>")
    add(_img(plots.get("licenses")))
    add(_ranking(rk["license"], "license"))

    add("<h2>Images</h2>")
    add(_img(plots.get("image_sizes")))
    hs = r["histograms"]
    add(
        _table(
            ["figure", "samples", "below range", "above range"],
            [
                [escape(k), num(hs[k]["n"]), num(hs[k]["clipped_low"]), num(hs[k]["clipped_high"])]
                for k in ("width", "height", "aspect", "caption_chars")
                if k in hs
            ],
        )
    )

    clip = r["thresholds"]["clip"]
    add("<h2>CLIP similarity</h2>")
    add(_img(plots.get("similarity")))
    add(f'<p class="muted">thresholds: {escape(clip["source"])}</p>')
    add(_table(["language key", "threshold"], [[escape(k), num(v)] for k, v in clip["values"].items()]))
    add(
        _table(
            ["language group", "embedded samples"],
            [[escape(k.split(":", 1)[1]), num(v["n"])] for k, v in hs.items() if k.startswith("similarity:")],
        )
    )

    st = r["thresholds"]["score"]
    add("<h2>Safety and quality scores</h2>")
    add(_img(plots.get("scores")))
    add(
        _table(
            ["score", "samples scored", "mean", "threshold", "share above"],
            [
                ["punsafe", num(pop["punsafe_n"]), num(pop["punsafe_mean"]), num(st["punsafe_threshold"]), pct(pop["punsafe_over_share"])],
                ["pwatermark", num(pop["pwatermark_n"]), num(pop["pwatermark_mean"]), num(st["pwatermark_threshold"]), pct(pop["pwatermark_over_share"])],
                ["aesthetic", num(pop["aesthetic_n"]), num(pop["aesthetic_mean"]), "–", "–"],
                ["toxicity", num(pop["toxicity_n"]), "–", num(st["toxicity_threshold"]), pct(pop["toxic_share"])],
            ],
        )
    )
    add(_img(plots.get("tags")))
    add(
        _table(
            ["zero-shot tag", "samples", "share of scored"],
            [[escape(x["key"]), num(x["count"]), pct(x["share"])] for x in rk["nsfw_tag"]],
        )
    )
    add(_table(["flag", "samples", "share of scored"], [[escape(x["key"]), num(x["count"]), pct(x["share"])] for x in rk["flag"]]))
    add("<h3>Alt-text toxicity (the audit's hate content rate)</h3>")
    kind_note = (
        '<p class="note">Scored by the <b>word-list fallback</b>, not a classifier: it flags '
        "listed words and cannot see context. Treat the rate as a lower bound of what a "
        "classifier would flag.</p>"
        if tox["kind"] in ("word list", "mixed")
        else ""
    )
    add(kind_note)
    add(
        f"<p>{pct(tox['rate'])} of {num(tox['scored'])} scored captions above "
        f"{num(tox['threshold'])} ({num(tox['toxic'])} captions); scorer: {escape(tox['label'])}</p>"
    )
    add(_table(["toxicity model", "samples"], [[escape(k), num(v)] for k, v in tox["models"].items()]))

    sw = r["sensitivity"]
    add("<h2>Threshold sensitivity</h2>")
    add(
        '<p class="muted">One CLIP threshold for every language; kept = similarity at or above '
        "it; shares among the kept samples.</p>"
    )
    add(_img(plots.get("sensitivity")))
    add(
        _table(
            ["threshold", "kept", "NSFW", "UNSURE", "toxic"],
            [[num(p["threshold"]), num(p["kept"]), pct(p["nsfw_share"]), pct(p["unsure_share"]), pct(p["toxic_share"])] for p in sw["points"]],
        )
    )

    add("<h2>Keyword probes</h2>")
    add(_probes_section(r["probes"], plots.get("probes")))

    d = r["duplicates"]
    add("<h2>Duplicates</h2>")
    sem = d["semantic"]
    rows = [
        ["exact: same image (sha256)", num(d["with_sha256"]), num(d["exact_image_duplicates"])],
        ["exact: same URL and caption", num(d["with_url_text"]), num(d["exact_url_caption_duplicates"])],
    ]
    if sem["computed"]:
        rows.append([f"semantic: SemDeDup (eps {num(sem['eps'])}, subset {escape(sem['subset'])})", num(sem["embedded"]), num(sem["removed"])])
    add(_table(["kind", "samples considered", "duplicates"], rows))
    if not sem["computed"]:
        add(f'<p class="muted">semantic duplicates: {escape(sem["why"])}</p>')
    td = r["takedowns"]
    add("<h2>Takedowns</h2>")
    add(f"<p>{num(td['requests'])} takedown requests.</p>")
    add(_table(["kind", "requests"], [[escape(k), num(v)] for k, v in td["by_kind"].items()]))
    add(_table(["table", "rows removed"], [[escape(k), num(v)] for k, v in td["removed_rows"].items()]))

    if r.get("compare"):
        add(_compare_section(r["compare"], plots.get("compare")))

    add("<h2>How it was built</h2>")
    add(
        _table(
            ["stage", "status", "started (UTC)", "rows in", "rows out", "seconds", "config digest"],
            [
                [escape(x["stage"]), escape(x["status"] or ""), escape(x["started_at"] or ""), num(x["rows_in"]), num(x["rows_out"]), num(x["seconds"]), escape(x["config_digest"] or "")]
                for x in r["runs"]
            ],
        )
    )
    add('<p class="muted">The dataset card (README.md next to this page) lists each stage\'s settings.</p>')

    if thumbs:
        add("<h2>Sample thumbnails</h2>")
        add(
            f'<p class="muted">Only samples whose punsafe is known and below '
            f'{num(st["punsafe_threshold"])}, tagged UNLIKELY, without a drop flag.</p>'
        )
        add(
            '<div class="thumbs">'
            + "".join(
                f'<img class="thumb" data-sample-id="{escape(t["sample_id"])}" width="96" height="96" '
                f'alt="sample {escape(t["sample_id"])}" src="data:{escape(t["mime"])};base64,{t["b64"]}">'
                for t in thumbs
            )
            + "</div>"
        )
    body = "\n".join(p for p in parts if p)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _probes_section(p: dict, plot: Plot | None) -> str:
    if p.get("status") != "ok":
        return '<p class="muted">Keyword probes were not run (report.probes=false or --no-probes).</p>'
    out = [
        f'<p class="muted">{len(p["terms"])} terms from {escape(p["terms_file"])}. Caption match: '
        "every sample whose caption holds the term as a whole word. Index: the term as a text "
        f"query, top results (safe mode off, so nothing is hidden from the count). Population: "
        f'NSFW {pct(p["baseline"]["nsfw_share"])}, NSFW or UNSURE '
        f'{pct(p["baseline"]["nsfw_or_unsure_share"])}, toxic {pct(p["baseline"]["toxic_share"])}.</p>',
        _img(plot),
    ]
    idx = p["index"]
    if idx.get("status") != "ok":
        out.append(f'<p class="muted">index probes skipped: {escape(idx.get("why", ""))}</p>')
    rows = []
    for t in p["terms"]:
        c = p["caption"][t]
        i = (idx.get("terms") or {}).get(t) or {}
        rows.append(
            [
                escape(t),
                num(c["n"]),
                pct(c["nsfw_share"]),
                pct(c["unsure_share"]),
                num(c["punsafe_mean"]),
                pct(c["toxic_share"]),
                num(c["elevation"]["nsfw_or_unsure"]),
                num(i.get("returned")),
                pct(i.get("nsfw_share")),
                pct(i.get("unsure_share")),
                num(i.get("punsafe_mean")),
                pct(i.get("toxic_share")),
                num((i.get("elevation") or {}).get("nsfw_or_unsure")),
            ]
        )
    out.append(
        _table(
            [
                "term", "captions", "NSFW", "UNSURE", "mean punsafe", "toxic", "× population",
                "index results", "NSFW", "UNSURE", "mean punsafe", "toxic", "× population",
            ],
            rows,
        )
    )
    if idx.get("status") == "ok":
        ix = idx["index"]
        out.append(
            f'<p class="muted">index {escape(str(ix["name"]))} ({escape(str(ix["factory"]))}, '
            f'{num(ix["count"])} vectors, model {escape(str(ix["model_id"]))}), top {num(idx["k"])} per term</p>'
        )
    return "\n".join(out)


def _compare_section(c: dict, plot: Plot | None) -> str:
    a, b = c["a"], c["b"]
    keys = [
        ("rows", "samples", num),
        ("embedded", "embedded", num),
        ("nsfw_share", "tagged NSFW", pct),
        ("unsure_share", "tagged UNSURE", pct),
        ("drop_share", "drop flag", pct),
        ("punsafe_mean", "mean punsafe", num),
        ("toxic_share", "toxic captions", pct),
    ]
    rows = [[escape(label), f(a["metrics"].get(k)), f(b["metrics"].get(k))] for k, label, f in keys]
    return "\n".join(
        [
            "<h2>Comparison</h2>",
            f"<p>A: {escape(a['label'])} · B: {escape(b['label'])}</p>",
            _table(["figure", "A", "B"], rows),
            _img(plot),
        ]
    )
