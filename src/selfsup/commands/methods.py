"""``selfsup methods``: the table of methods: family, paper, what prevents collapse, and the preset's views,
batch and optimizer (read from the preset files, so the table cannot drift from them)."""

from __future__ import annotations

import re

from selfsup import methods

OPTIMIZER_NAMES = {"sgd": "SGD", "lars": "LARS", "adam": "Adam", "adamw": "AdamW"}
COLUMNS = ("method", "family", "paper", "what prevents collapse", "preset (views, batch, optimizer)")


def first_author(paper: str, year: int) -> str:
    """'Chen et al. 2020' from a paper line ending in '(Chen, Kornblith, ...; ICML)' or '(Chen & He, CVPR)'."""
    venue = re.search(r"\(([^()]*)\)\s*$", paper)
    authors = re.split(r";|, (?=[A-Z][A-Za-z ]*$)", venue.group(1))[0] if venue else paper
    names = re.split(r",|&", authors)
    lead = names[0].strip()
    return f"{lead} et al. {year}" if len(names) > 2 else f"{authors.strip()} {year}"


def preset_summary(name: str) -> str:
    """Views, batch and optimizer of the preset's CIFAR section (sequences: its first section)."""
    sections = {key: value for key, value in methods.preset(name).items() if isinstance(value, dict)}
    scale, section = ("cifar", sections["cifar"]) if "cifar" in sections else next(iter(sections.items()))
    views = section.get("views", {}).get("preset", "default")
    batch = section.get("train", {}).get("batch_size", "?")
    optimizer = section.get("optim", {}).get("name", "?")
    optimizer = OPTIMIZER_NAMES.get(optimizer, optimizer)
    return f"{views}, {batch}, {optimizer}" + ("" if scale == "cifar" else f" ({scale})")


def methods_table() -> str:
    """One aligned row per registered method, with the README's columns."""
    rows = [COLUMNS] + [
        (name, cls.family, first_author(cls.paper, cls.year), cls.prevents_collapse, preset_summary(name))
        for name, cls in methods.available().items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)
