"""The report page's HTML pieces: its stylesheet, tables from DataFrames, figures as embedded
PNGs (base64, so the page needs no server and fetches nothing), numbers formatted for reading."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1320px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin-top:24px;font-size:16px}p.meta,p.note{color:#555;font-size:13px}
div.tw{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:8px 0 16px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.better{background:#d6f0df}td.worse{background:#f7d9d2}td.noise{background:#eee;color:#666}
td.seed1{background:#e3ebf6}td.mixed{background:#f6ebc8}
img{max-width:100%;display:block;margin:6px 0 18px;border:1px solid #eee}
ul.notes li{font-size:13px;color:#7a4b00}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;font-size:12px}
"""

VERDICT_CLASS = {
    "better": "better",
    "worse": "worse",
    "noise": "noise",
    "1 seed": "seed1",
    "mixed": "mixed",
}


def figure_png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(v, signed: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:+d}" if signed else f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return str(v)


def table(frame, index: bool = False, classes=None, left=()) -> str:
    """A DataFrame as an HTML table; ``classes`` (same shape, or None) gives per-cell CSS
    classes."""
    cols = list(frame.columns)
    head = ([f'<th class="l">{html.escape(str(frame.index.name or ""))}</th>'] if index else []) + [
        f"<th{' class=l' if c in left else ''}>{html.escape(str(c))}</th>" for c in cols
    ]
    body = []
    for i, (idx, row) in enumerate(frame.iterrows()):
        cells = [f'<td class="l">{html.escape(str(idx))}</td>'] if index else []
        for j, c in enumerate(cols):
            cls = []
            if c in left:
                cls.append("l")
            if classes is not None:
                extra = classes.iloc[i, j]
                if isinstance(extra, str) and extra:
                    cls.append(extra)
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(fmt(row[c]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='tw'><table><tr>{''.join(head)}</tr>{''.join(body)}</table></div>"
