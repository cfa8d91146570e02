"""Post-hoc diagnostics of a mini-DataComp run: what FLYT / M-FLYT learned and where
Soft Cap Sampling's draws go. Nothing here changes the benchmark or its headline table;
the student rows it trains are labelled post-hoc (chosen after seeing the table).

    nice -n 19 .venv/bin/python -m benchmarks.minidatacomp.run --save /tmp/mdc.npz
    nice -n 19 .venv/bin/python -m benchmarks.minidatacomp.diagnose --saved /tmp/mdc.npz

1. Retrains FLYT and M-FLYT with the product's functions on the stage's exact inputs
   (rows sorted by sample_id, same settings and seed) and checks the scores equal the
   stage's (so the heads analysed are the heads the stage used).
2. The FLYT objective itself, at the fresh reference: the validation gain of the learned
   heads against simple score vectors (scaled CLIP-L similarity, a clean-pair oracle, the
   learned M-FLYT logits scaled up). Does the objective prefer what the students prefer?
3. FLYT with a frozen reference (stationary objective): does the early peak remain?
4. What the selections contain by colour and shape (class balance).
5. SCS: unique share and draw composition against the number of draws n.
6. A few post-hoc student rows, paired with CLIP (L) top-30%.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.minidatacomp import harness as H
from benchmarks.minidatacomp import pool as P
from benchmarks.minidatacomp import run as R
from benchmarks.minidatacomp import stats as ST
from benchmarks.minidatacomp.report import merge_block
from laion_spark.curate import flyt
from laion_spark.curate.sampling import soft_cap_counts

START = "<!-- minidatacomp:diagnose:start -->"
END = "<!-- minidatacomp:diagnose:end -->"


def zs(x: np.ndarray) -> np.ndarray:
    return (x - np.nanmean(x)) / (np.nanstd(x) + 1e-12)


def objective_gains(world, order, s, logits: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Validation gain of each score vector at the fresh (identity) reference, with the
    validation split and fixed upstream batches train_tasks uses."""
    img = torch.as_tensor(world.emb_img[order], dtype=torch.float32)
    txt = torch.as_tensor(world.emb_txt[order], dtype=torch.float32)
    _, val_t = flyt.split_tasks(world.flyt_tasks, s.val_fraction, seed)
    val = flyt._torch_tasks(val_t)
    ref = flyt.ReferenceCLIP(img.shape[1], txt.shape[1])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ref.named_parameters()}
    gv = torch.Generator().manual_seed(seed + 1)
    b = min(s.batch_size, len(img))
    picks = [torch.randperm(len(img), generator=gv)[:b] for _ in range(s.val_batches)]
    out = {}
    for name, z in logits.items():
        zt = torch.as_tensor(np.nan_to_num(z[order]), dtype=torch.float32)
        batches = [(zt[i], img[i], txt[i]) for i in picks]
        out[name] = flyt.validation_gain(
            lambda f: f, ref, params, batches, val, s.inner_lr, s.temperature
        )
    return out


def class_balance(world, sel: H.Selection) -> dict[str, tuple[float, float]]:
    """(min, max) over classes of (share of draws of the class / share in the pool),
    for colour and shape of the pictures that show something."""
    out = {}
    w = sel.repeat / max(1, sel.draws)
    attrs = world.pool.attrs
    for task in ("color", "shape"):
        names = P.TASKS[task]
        lab = np.array([names.index(getattr(a, task)) if a else -1 for a in attrs])
        pool_share = np.array([(lab == k).sum() for k in range(len(names))]) / (lab >= 0).sum()
        sel_lab = lab[sel.idx]
        drawn = np.array([w[sel_lab == k].sum() for k in range(len(names))])
        ratio = drawn / max(1e-12, drawn.sum()) / np.maximum(pool_share, 1e-12)
        out[task] = (float(ratio.min()), float(ratio.max()), names[int(ratio.argmin())])
    return out


def top_fraction(scores: np.ndarray, fraction: float = 0.3) -> H.Selection:
    """DataComp's rule (the value at rank int(N * fraction) of the descending sort)."""
    v = np.nan_to_num(scores, nan=-np.inf)
    t = -np.sort(-v)[int(len(v) * fraction)]
    idx = np.flatnonzero(v >= t)
    return H.Selection(idx, np.ones(len(idx), np.int64))


def main(argv: list[str] | None = None) -> None:
    ap = R.parser()
    ap.add_argument("--saved", required=True)
    ap.add_argument("--students", type=int, default=1, help="0: skip the student rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    sizes = R.world_sizes(args)
    world = H.build_world(sizes)
    ids, scores, sels, notes = R.load_saved(args.saved)
    order = np.argsort(np.array(ids))  # the stage trains on rows sorted by sample_id
    from laion_spark.config import load_config

    s = load_config("local", R.flyt_overrides(args)).curate.flyt
    img, txt = world.emb_img[order], world.emb_txt[order]
    lines = [
        START,
        "",
        f"    {' '.join(['python -m benchmarks.minidatacomp.diagnose'] + (argv or sys.argv[1:]))}",
        "",
    ]  # noqa: E501

    # 1. the stage's heads, retrained
    fm = flyt.train_flyt_tasks(img, txt, world.flyt_tasks, s, seed=0)
    f_sc = np.empty(len(ids))
    f_sc[order] = fm(np.concatenate([img, txt], 1))
    cols = np.stack([scores[c] for c in R.MFLYT_COLUMNS], 1)
    mm = flyt.train_mflyt_tasks(cols[order], R.MFLYT_COLUMNS, img, txt, world.flyt_tasks, s, 0)
    m_sc = np.empty(len(ids))
    m_sc[order] = mm(cols[order])
    err_f = float(np.nanmax(np.abs(f_sc - scores["flyt_score"])))
    err_m = float(np.nanmax(np.abs(m_sc - scores["mflyt_score"])))
    lines += [
        f"Retrained heads reproduce the stage's scores: max |Δ| FLYT {err_f:.2e}, "
        f"M-FLYT {err_m:.2e} (float32 storage).",
        "",
    ]
    # 2. the objective
    kinds = np.array(world.pool.kinds)
    clean = np.isin(kinds, ["clean", "partial", "watermark"]).astype(float)
    cand = {"FLYT (learned)": f_sc, "M-FLYT (learned)": m_sc}
    for k in (1, 2, 4):
        cand[f"M-FLYT × {k}"] = k * m_sc if k > 1 else m_sc
    for k in (0.5, 1, 2, 4):
        cand[f"CLIP-L sim, z-score × {k}"] = k * zs(world.sim_l)
    for k in (1, 2, 4):
        cand[f"oracle: true caption × {k}"] = k * clean
    gains = objective_gains(world, order, s, cand)
    lines += [
        "FLYT's objective (validation gain at the fresh reference; higher = the objective "
        "prefers these weights) against what the students measured:",
        "",
        "| score vector | val gain |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:+.4f} |" for k, v in gains.items()]
    # 3. frozen reference
    s_frozen = dataclasses.replace(s, online_reference=False)
    ff = flyt.train_flyt_tasks(img, txt, world.flyt_tasks, s_frozen, seed=0)
    ff_sc = np.empty(len(ids))
    ff_sc[order] = ff(np.concatenate([img, txt], 1))
    curve = ", ".join(
        f"{a}: {g:.4f}" for a, g in ff.info["evals"][:: max(1, len(ff.info["evals"]) // 12)]
    )
    lines += [
        "",
        f"FLYT with a frozen reference: {ff.info['steps']} steps, best {ff.info['best_step']}, "
        f"logit std {np.std(ff_sc):.3f}; val gain {curve}.",
        "",
    ]
    # 4. class balance and composition
    rows = {
        "CLIP (L) top-30%": sels["clip_top30"],
        "FLYT top-30%": sels["flyt_top30"],
        "FLYT (frozen ref) top-30%": top_fraction(ff_sc),
        "M-FLYT top-30%": sels["mflyt_top30"],
        "M-FLYT + SCS": sels["mflyt_scs"],
        "oracle clean": sels["oracle_clean"],
    }
    lines += [
        "Class balance of the selections (share of draws of a class / its share in the pool; "
        "min–max over classes, and the least-kept class):",
        "",
        "| selection | good share | colour min–max (least) | shape min–max (least) | tail vs pool |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, sel in rows.items():
        cb, d = class_balance(world, sel), H.describe(world, sel)
        lines.append(
            f"| {name} | {d['good_share']:.2f} | {cb['color'][0]:.2f}–{cb['color'][1]:.2f} "
            f"({cb['color'][2]}) | {cb['shape'][0]:.2f}–{cb['shape'][1]:.2f} ({cb['shape'][2]}) "
            f"| {d['tail_vs_pool']:.2f} |"
        )
    # 5. SCS against n
    lines += [
        "",
        "Soft Cap Sampling on the M-FLYT logits (T = 1, α = 0.2, the stage's seed) against the "
        "number of draws n:",
        "",
        "| n | n / pool | unique | unique / pool | good share | max repeat |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    z = np.nan_to_num(scores["mflyt_score"][order], nan=-np.inf)
    post: dict[str, H.Selection] = {}
    for frac in (0.3, 1.0, 3.0):
        n = int(frac * len(ids))
        c_sorted = soft_cap_counts(z, n, 0.2, 0)
        counts = np.empty_like(c_sorted)
        counts[order] = c_sorted
        sel = H.Selection(np.flatnonzero(counts), counts[counts > 0].astype(np.int64))
        d = H.describe(world, sel)
        lines.append(
            f"| {n} | {frac} | {d['unique']} | {d['unique'] / len(ids):.2f} | "
            f"{d['good_share']:.2f} | {d['max_repeat']} |"
        )
        if frac == 1.0:
            post["M-FLYT + SCS, n = pool (post-hoc)"] = sel
        if n == sels["mflyt_scs"].draws:
            same = np.array_equal(sel.idx, sels["mflyt_scs"].idx) and np.array_equal(
                sel.repeat, sels["mflyt_scs"].repeat
            )
            lines[-1] += f" ← the stage's M-FLYT + SCS (identical: {same})"
    post["FLYT (frozen reference) top-30% (post-hoc)"] = top_fraction(ff_sc)
    # 6. post-hoc students, paired with CLIP (L) top-30%
    if args.students:
        sel_all = {"CLIP (L) top-30%": sels["clip_top30"], **post}
        res = R.evaluate_all(world, sel_all, list(range(args.seeds)))
        n_items = {m: res["CLIP (L) top-30%"][m].shape[1] for m in R.METRICS}
        boot = ST.Bootstrap(args.seeds, n_items)
        table, _ = ST.summary(res, R.METRICS, boot)
        lines += [
            "",
            "Post-hoc student rows (chosen after seeing the table, so optimistic; "
            f"{args.seeds} paired seeds):",
            "",
            "| selection | unique | draws | good share | avg [95% CI] | − CLIP (L) top-30% |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, sel in sel_all.items():
            d = H.describe(world, sel)
            diff = ST.paired(res, name, "CLIP (L) top-30%", R.METRICS, boot)["avg"]
            m, lo, hi = table[name]["avg"]
            lines.append(
                f"| {name} | {d['unique']} | {d['draws']} | {d['good_share']:.2f} | "
                f"{m:.3f} [{lo:.3f}, {hi:.3f}] | {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] |"
            )
    lines += ["", f"Diagnose run time {time.time() - t0:.0f} s.", "", END]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        p = Path(args.out)
        p.write_text(merge_block(p.read_text() if p.exists() else "", md, START, END))


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main()
