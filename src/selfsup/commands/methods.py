"""``selfsup methods``: the table of methods with their family, year and paper."""

from __future__ import annotations

from selfsup import methods


def methods_table() -> str:
    """One row per registered method: name, family, year, paper."""
    rows = [(name, cls.family, cls.year, cls.paper) for name, cls in methods.available().items()]
    width = max(len(row[0]) for row in rows)
    lines = [f"{'method':<{width}}  {'family':<13} year  paper"]
    lines += [f"{name:<{width}}  {family:<13} {year}  {paper}" for name, family, year, paper in rows]
    return "\n".join(lines)
