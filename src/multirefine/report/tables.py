"""HTML tables of the report: numbers formatted as the report shows them."""

from __future__ import annotations

import html

import numpy as np

__all__ = ["fmt", "table"]


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "∞" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def table(header: list[str], rows: list[list], left: int = 0) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned)."""
    head = "".join(f'<th class="left">{html.escape(h)}</th>' if i < left else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="left">{fmt(v)}</td>' if i < left else f"<td>{fmt(v)}</td>"
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
