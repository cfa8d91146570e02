"""Render docs/tables.md from the table registry, so the docs never drift from the schemas.

    python -m laion_spark.tables_doc > docs/tables.md
"""

from __future__ import annotations

from laion_spark import ids
from laion_spark.tables import SPECS

_INTRO = """# Tables

Generated from `laion_spark/tables.py` by `python -m laion_spark.tables_doc > docs/tables.md`
(a test checks it is current). Every table is a Delta table; locally a folder
`<workdir>/tables/<name>`, on a cluster optionally a catalog table `<database>.<name>`.
Stages may add columns by schema evolution (e.g. `flyt_score` in `scores`).

## `sample_id`
"""


def tables_markdown() -> str:
    out = [_INTRO, (ids.__doc__ or "").split("\n", 2)[2].strip(), ""]
    for spec in SPECS.values():
        out.append(f"## `{spec.name}`\n\n{spec.doc}. Key: {', '.join(f'`{k}`' for k in spec.keys)}.\n")
        out.append("| column | type |\n|---|---|")
        for f in spec.schema.fields:
            out.append(f"| `{f.name}` | {f.dataType.simpleString()} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables_markdown())
