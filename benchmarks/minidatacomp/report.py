"""Render the mini-DataComp results as markdown (between markers in the doc, so the
hand-written analysis around them survives a re-run) plus a JSON record and a result line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from benchmarks.minidatacomp import pool as P

START, END = "<!-- minidatacomp:generated:start -->", "<!-- minidatacomp:generated:end -->"
COLS = ["color", "shape", "position", "background", "i2t_r@5", "t2i_r@5"]
HEAD = ["colour", "shape", "position", "background", "I→T R@5", "T→I R@5"]


def _ci(v: tuple[float, float, float], digits: int = 3) -> str:
    m, lo, hi = v
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _d(v: tuple[float, float, float]) -> str:
    m, lo, hi = v
    mark = " **+**" if lo > 0 else (" **−**" if hi < 0 else "")
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}"


def _label(name: str) -> str:
    from benchmarks.minidatacomp.run import DIAGNOSTIC, METHODS

    return {n: label for label, n in METHODS + DIAGNOSTIC}.get(name, name)


def render(*, world, table, diffs, desc, results, scores, stage, timing, args, sizes) -> dict:
    from benchmarks.minidatacomp.run import (
        CHANCE,
        DIAGNOSTIC,
        METHODS,
        MFLYT_COLUMNS,
        SCS_ALPHAS,
        SCS_TEMPS,
        grid_name,
    )

    n = sizes.pool
    kinds = {k: world.pool.kinds.count(k) for k in P.NOISE}
    notes = stage.notes
    nseeds = len(next(iter(results.values()))["color"])
    lines: list[str] = []
    cmd = "nice -n 19 .venv/bin/python -m benchmarks.minidatacomp.run" + (
        " --tiny" if args.tiny else f" --pool {args.pool} --seeds {args.seeds}"
    )
    # every other option that differs from its default, so the line reproduces this run
    from benchmarks.minidatacomp.run import parser

    defaults = vars(parser().parse_args([]))
    for k, v in sorted(vars(args).items()):
        if k not in ("tiny", "pool", "seeds", "out", "json", "save") and v != defaults.get(k):
            cmd += f" --{k.replace('_', '-')} {v}"
    load = os.getloadavg()
    lines += [
        START,
        "",
        "Command (repository root):",
        "",
        f"    {cmd}",
        "",
        f"Run time {timing['total']} s in all: world (render, features, scorers) "
        f"{timing['world']} s, Delta inputs + score stage {timing['tables_and_score_stage']} s, "
        f"curate stage {timing['curate_stage']} s, {timing['students_n']} students "
        f"{timing['students']} s. Machine: 2 CPU cores shared with other work, torch "
        f"{args.threads} thread(s), load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1/5/15 min).",
        "",
        f"Pool: {n} generated pairs: "
        + ", ".join(f"{k} {v} ({v / n:.0%})" for k, v in kinds.items())
        + f". Shapes follow a Zipf law (s = {P.SHAPE_ZIPF}); the four rarest "
        f"({', '.join(P.TAIL_SHAPES)}) are {world_tail_share(world):.1%} of the pictures. "
        f"Every student sees exactly {sizes.samples_seen} samples (batch {sizes.batch}); "
        f"{nseeds} seeds, paired across methods. Chance: colour {CHANCE['color']:.3f}, shape "
        f"{CHANCE['shape']:.3f}, position {CHANCE['position']:.3f}, background "
        f"{CHANCE['background']:.3f}, R@5 {5 / sizes.eval_pairs:.3f}; avg of the six "
        f"{chance_avg(sizes):.3f}.",
        "",
        "Mean over seeds with a 95% paired-bootstrap interval (seeds and evaluation items "
        "resampled). `good share` = share of draws that are clean, partial or watermarked "
        "pairs (true captions); `tail` = shape accuracy on the four rarest shapes.",
        "",
        "| method | unique | draws | good share | "
        + " | ".join(HEAD)
        + " | **avg** | tail shapes |",
        "|---|---:|---:|---:|" + "---:|" * len(HEAD) + "---:|---:|",
    ]
    for label, name in METHODS + DIAGNOSTIC:
        if name not in table:
            lines.append(
                f"| {label} | {desc.get(name, {}).get('unique', 0)} | - | - |" + " - |" * 8
            )
            continue
        t, d = table[name], desc[name]
        lines.append(
            f"| {label} | {d['unique']} | {d['draws']} | {d['good_share']:.2f} | "
            + " | ".join(f"{t[c][0]:.3f}" for c in COLS)
            + f" | **{_ci(t['avg'])}** | {t['shape_tail'][0]:.3f} |"
        )
    nf = table.get("no_filter")
    if nf:
        lines += [
            "",
            f"No-filter student: avg {nf['avg'][0]:.3f} vs chance {chance_avg(sizes):.3f} "
            f"(+{nf['avg'][0] - chance_avg(sizes):.3f}); shape {nf['shape'][0]:.3f} vs "
            f"{CHANCE['shape']:.3f}.",
        ]
    lines += [
        "",
        "Paired differences (a − b), mean [95% CI]; **+** / **−**: the interval excludes 0.",
        "",
        "| a − b | avg | colour | shape | I→T R@5 | T→I R@5 | tail shapes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (a, b), d in diffs.items():
        lines.append(
            f"| {_label(a)} − {_label(b)} | {_d(d['avg'])} | {_d(d['color'])} | "
            f"{_d(d['shape'])} | {_d(d['i2t_r@5'])} | {_d(d['t2i_r@5'])} | "
            f"{_d(d['shape_tail'])} |"
        )
    q1 = diffs.get(("mflyt_scs", "clip_top30"))
    q2 = diffs.get(("clip_top30", "no_filter"))
    verdict = []
    if q1 and q2:
        a1, a2 = q1["avg"], q2["avg"]
        verdict = [
            "",
            f"**M-FLYT + SCS > CLIP-score top-30%: {yes_no(a1)}** "
            f"(avg {a1[0]:+.3f} [{a1[1]:+.3f}, {a1[2]:+.3f}]). "
            f"**CLIP-score top-30% > no filter: {yes_no(a2)}** "
            f"(avg {a2[0]:+.3f} [{a2[1]:+.3f}, {a2[2]:+.3f}]).",
        ]
    lines += verdict
    # ---- scorers
    lines += ["", "FLYT / M-FLYT training (curate stage notes):", ""]
    lines += ["| scorer | steps run | best step | val gain curve (step: gain) | logit std | "
              "logit p95 − p5 |", "|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for k in ("flyt", "mflyt"):
        curve = notes.get(f"{k}_val_gain") or []
        c = ", ".join(f"{s}: {g:.4f}" for s, g in curve)
        lines.append(
            f"| {k} | {notes.get(f'{k}_steps')} | {notes.get(f'{k}_best_step')} | {c} | "
            f"{notes.get(f'{k}_logit_std')} | {notes.get(f'{k}_logit_p5_p95')} |"
        )
    w = notes.get("mflyt_weights")
    cols = notes.get("mflyt_columns") or MFLYT_COLUMNS
    if w:
        lines += [
            "",
            "M-FLYT weights on the standardised columns (logit change per standard deviation):",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---:|" * len(cols),
            "| " + " | ".join(f"{x:+.3f}" for x in w) + " |",
        ]
    lines += ["", "Score columns by noise kind (pool means):", ""]
    kinds_arr = np.array(world.pool.kinds)
    shown = [c for c in MFLYT_COLUMNS + ["mflyt_score"] if c in scores]
    lines += ["| kind | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for k in P.NOISE:
        m = kinds_arr == k
        lines.append(
            f"| {k} | " + " | ".join(f"{np.nanmean(scores[c][m]):.3f}" for c in shown) + " |"
        )
    # ---- SCS grid
    lines += [
        "",
        "Soft Cap Sampling sensitivity (M-FLYT logits / temperature, α per draw; "
        f"n = {sizes.samples_seen} draws, rounds of 1% of the pool):",
        "",
        "| temperature | α | unique | max repeat | good share | tail vs pool | avg [95% CI] |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in SCS_TEMPS:
        for a in SCS_ALPHAS:
            g = grid_name(t, a)
            if g not in table:
                continue
            d = desc[g]
            lines.append(
                f"| {t} | {a} | {d['unique']} | {d['max_repeat']} | {d['good_share']:.2f} | "
                f"{d['tail_vs_pool']:.2f} | {_ci(table[g]['avg'])} |"
            )
    # ---- where draws go
    lines += [
        "",
        "Where each selection's draws go (share of draws by kind; `tail vs pool` = share of "
        "draws showing a rare shape / that share in the pool):",
        "",
        "| method | " + " | ".join(P.NOISE) + " | tail vs pool | max repeat |",
        "|---|" + "---:|" * (len(P.NOISE) + 2),
    ]
    for label, name in METHODS + DIAGNOSTIC:
        if name not in desc:
            continue
        d = desc[name]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{d['share_' + k]:.2f}" for k in P.NOISE)
            + f" | {d['tail_vs_pool']:.2f} | {d['max_repeat']} |"
        )
    secs = notes.get("seconds_by_filter", {})
    lines += [
        "",
        f"Curate stage: {stage.seconds:.0f} s for {len(secs)} names; seconds per name: "
        + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()),
        "",
        f"Other stage notes: image_based clusters {notes.get('image_based_clusters')}, "
        f"SemDeDup kept {notes.get('semdedup_kept_fraction')}, CLIP (L) threshold "
        f"{fmt(notes.get('similarity_threshold'))}.",
        "",
        END,
    ]
    md = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else None
    full = merge(out.read_text() if out and out.exists() else "", md)
    by = {k: v["avg"][0] for k, v in table.items()}
    rl = (
        "result: "
        + " ".join(f"{k}={by[k]:.4f}" for k in ("no_filter", "clip_top30", "mflyt_scs") if k in by)
        + (f" mflyt_scs_minus_clip30={q1['avg'][0]:+.4f}" if q1 else "")
        + (f" lo={q1['avg'][1]:+.4f}" if q1 else "")
        + f" seconds={timing['total']}"
    )
    rec = {
        "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
        "diffs": {f"{a}-{b}": {m: list(v) for m, v in d.items()} for (a, b), d in diffs.items()},
        "desc": desc,
        "notes": {k: v for k, v in notes.items()},
        "timing": timing,
    }
    return {"markdown": full, "json": rec, "result_line": rl, "generated": md}


def yes_no(v: tuple[float, float, float]) -> str:
    if v[1] > 0:
        return "yes"
    if v[2] < 0:
        return "no (significantly worse)"
    return "not shown (interval includes 0)"


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def world_tail_share(world) -> float:
    return float(np.mean([a is not None and a.shape in P.TAIL_SHAPES for a in world.pool.attrs]))


def chance_avg(sizes) -> float:
    from benchmarks.minidatacomp.run import CHANCE

    return float(np.mean(list(CHANCE.values()) + [5 / sizes.eval_pairs] * 2))


def merge(doc: str, generated: str) -> str:
    """Replace the generated block of `doc` (or start a doc with it)."""
    if START in doc and END in doc:
        pat = re.compile(re.escape(START) + ".*?" + re.escape(END) + "\n?", re.S)
        return pat.sub(lambda _m: generated, doc, count=1)
    return "# Curate benchmark: mini-DataComp\n\n" + generated


def merge_block(doc: str, block: str, start: str, end: str) -> str:
    """Replace the block between `start` and `end` markers, or append it."""
    if start in doc and end in doc:
        pat = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.S)
        return pat.sub(lambda _m: block, doc, count=1)
    return doc.rstrip("\n") + "\n\n" + block
