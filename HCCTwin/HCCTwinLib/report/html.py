"""Report sections -> one self-contained HTML file (inline CSS, PNGs as base64 data URIs, no external resources).

Every string from the summary is HTML-escaped here, in one place (:func:`_e`).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from .content import Block, Section

CSS = """
body{font-family:"Helvetica Neue",Arial,sans-serif;font-size:13px;color:#222;max-width:1100px;margin:24px auto;
padding:0 16px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;border-bottom:2px solid #2a5d8f;padding-bottom:2px;
margin-top:26px;color:#2a5d8f}
table{border-collapse:collapse;margin:6px 0 10px;width:100%}th,td{border:1px solid #c8c8c8;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#eef3f8}tr:nth-child(even) td{background:#fafafa}
.na{color:#8a5300;font-style:italic}.warning{background:#fff4e5;border:1px solid #f0b46b;padding:8px 10px;
border-radius:4px}figure{margin:8px 0 14px}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}.banner{background:#fff4e5;border-left:4px solid #e08a00;padding:6px 10px;
margin:8px 0}footer{margin-top:30px;font-size:11px;color:#666}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}figure,table{page-break-inside:avoid}}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(path: str | Path) -> str:
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _block(block: Block) -> str:
    if block.kind == "text":
        return f"<p>{_e(block.text)}</p>"
    if block.kind == "na":
        return f'<p class="na">{_e(block.text)}</p>'
    if block.kind == "warning":
        return f'<p class="warning">{_e(block.text)}</p>'
    if block.kind == "list":
        return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in block.items) + "</ul>"
    if block.kind == "image":
        if not block.image or not Path(block.image).is_file():
            return f'<p class="na">Not available: image {_e(block.text)} was not found.</p>'
        return (f'<figure><img src="{_data_uri(block.image)}" alt="{_e(block.text)}">'
                f"<figcaption>{_e(block.text)}</figcaption></figure>")
    if block.kind == "table":
        head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in block.header) + "</tr>"
        body = []
        for i, row in enumerate(block.rows):
            key = f' data-key="{_e(block.row_keys[i])}"' if i < len(block.row_keys) else ""
            body.append(f"<tr{key}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
        return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    raise ValueError(f"unknown report block kind {block.kind!r}")


def render_html(sections: Sequence[Section], *, title: str, banner: str) -> str:
    """The whole report as one HTML string."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", f'<div class="banner">{_e(banner)}</div>']
    for sec in sections:
        parts.append(f'<section id="{_e(sec.key)}"><h2>{_e(sec.title)}</h2>')
        parts += [_block(b) for b in sec.blocks]
        parts.append("</section>")
    parts.append(f"<footer>{_e(banner)}</footer></body></html>")
    return "\n".join(parts)


def write_html(sections: Sequence[Section], path: str | Path, *, title: str, banner: str) -> Path:
    path = Path(path)
    path.write_text(render_html(sections, title=title, banner=banner), encoding="utf-8")
    return path
