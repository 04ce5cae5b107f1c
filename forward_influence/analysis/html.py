"""HTML pieces shared by the analysis and the bench reports: tables and inline images."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "" if pd.isna(x) else f"{x:.3g}"
    return html.escape(str(x))


def html_table(df: pd.DataFrame, left: tuple[str, ...] = (), table_id: str | None = None) -> str:
    """A plain HTML table (numbers to 3 significant digits; verdict cells coloured)."""
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(str(c))}</th>' for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            cls = ["l"] if c in left else []
            if c == "verdict":
                cls.append(str(v).replace(" ", "-"))
            cells.append(f'<td class="{" ".join(cls)}">{_fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image_tag(path: Path, alt: str) -> str:
    """A ``<figure>`` with the PNG at ``path`` inlined (base64) and ``alt`` as its caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
