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
#summary{border:1px solid #2a5d8f;border-radius:6px;padding:4px 14px 8px;background:#fbfdff}
#summary h2{margin-top:8px}#summary figure img{max-height:420px}#summary .os img{max-width:70%}
@media print{body{margin:0;max-width:none;font-size:8.5pt;line-height:1.3}h1{font-size:15pt}
h2{font-size:11pt;page-break-after:avoid;margin-top:14px}figure,table,tr{page-break-inside:avoid}
table{font-size:8pt}th,td{padding:2px 4px}#summary{page-break-after:always;border:none;padding:0;background:none}
#summary figure{margin:4px 0 6px}#summary figure img{max-height:64mm}#summary .os img{max-height:72mm;max-width:none}
figure img{max-height:150mm}.banner{margin:4px 0}footer{display:none}}
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
        css = ' class="os"' if Path(block.image).name == "survival.png" else ""
        return (f'<figure{css}><img src="{_data_uri(block.image)}" alt="{_e(block.text)}">'
                f"<figcaption>{_e(block.text)}</figcaption></figure>")
    if block.kind == "table":
        head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in block.header) + "</tr>"
        body = []
        for i, row in enumerate(block.rows):
            key = f' data-key="{_e(block.row_keys[i])}"' if i < len(block.row_keys) else ""
            body.append(f"<tr{key}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
        return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    raise ValueError(f"unknown report block kind {block.kind!r}")


def _css_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def render_html(sections: Sequence[Section], *, title: str, banner: str,
                metadata: dict[str, str] | None = None) -> str:
    """The whole report as one HTML string (the PDF is this document laid out on A4 pages; ``metadata`` becomes
    the HTML meta tags, which WeasyPrint writes into the PDF's information dictionary)."""
    meta = "".join(f'<meta name="{_e(name)}" content="{_e(value)}">' for name, value in
                   {"author": (metadata or {}).get("Author"), "description": (metadata or {}).get("Subject"),
                    "keywords": (metadata or {}).get("Keywords"),
                    "generator": (metadata or {}).get("Creator")}.items() if value)
    footer = _css_string(f"{banner} · page ") + " counter(page) " + _css_string(" of ") + " counter(pages)"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', meta,
             f"<title>{_e(title)}</title><style>{CSS}\n@page{{size:A4;margin:11mm 11mm 13mm;"
             f"@bottom-center{{content:{footer};font-size:7pt;color:#666}}}}</style></head><body>",
             f"<h1>{_e(title)}</h1>", f'<div class="banner">{_e(banner)}</div>']
    for sec in sections:
        parts.append(f'<section id="{_e(sec.key)}"><h2>{_e(sec.title)}</h2>')
        parts += [_block(b) for b in sec.blocks]
        parts.append("</section>")
    parts.append(f"<footer>{_e(banner)}</footer></body></html>")
    return "\n".join(parts)


def write_html(sections: Sequence[Section], path: str | Path, *, title: str, banner: str,
               metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.write_text(render_html(sections, title=title, banner=banner, metadata=metadata), encoding="utf-8")
    return path
