"""Dataset report: what the tables hold, as a page, a dataset card and numbers.

    laion-spark report [--subset NAME] [--compare OTHER] [--as-of SPEC] [--out DIR]

stats -> plots -> card: `snapshot` pins each table at one Delta version, `stats` and
`probes` aggregate in Spark, `plots` draws from the aggregates only, `card` and `html`
render files from them, `build` runs the steps, `output` says where reports live
(`latest_report(cfg)` is what `serve` links to).
"""
