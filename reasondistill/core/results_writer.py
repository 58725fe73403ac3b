"""A run's result files: NAME.json (the data) and NAME.md (its table), side by side in the output directory.

The evaluation report a run may also write is `reasondistill.evaluate.report.write_report`, a stage above
core, which callers call beside this.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out_dir: Path, name: str, data: object, table: str) -> None:
    """Write `out_dir/NAME.json` (`data`, indented) and `out_dir/NAME.md` (`table`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (out_dir / f"{name}.md").write_text(table + "\n", encoding="utf-8")
