"""Report -> PDF: the report's HTML document laid out on A4 pages by WeasyPrint (the same document as
``report.html``: first page the tumor-board summary, then the details; tables, figures and page footers as in the
browser's print view). The PDF's metadata (title, author, subject) comes from the document's title and meta tags, so
a de-identified report carries no patient ID there either.

Fallback where WeasyPrint cannot be imported (it needs the Pango library; e.g. Slicer's Python on Windows without
GTK): the sections drawn with matplotlib's ``PdfPages`` — text and tables over A4 portrait pages in a monospaced
font, every image on a landscape page of its own.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from .content import Block, Section

A4_PORTRAIT = (8.27, 11.69)
A4_LANDSCAPE = (11.69, 8.27)
WIDTH_CHARS = 108
FONT = "DejaVu Sans Mono"
_STYLE = {  # size (pt), weight, colour, style, line height (inch)
    "title": (14, "bold", "#1b3f66", "normal", 0.30),
    "h2": (10, "bold", "#2a5d8f", "normal", 0.24),
    "text": (7.5, "normal", "#222222", "normal", 0.145),
    "th": (7.5, "bold", "#222222", "normal", 0.145),
    "na": (7.5, "normal", "#8a5300", "italic", 0.145),
    "warning": (7.5, "bold", "#a04000", "normal", 0.145),
}


def _table_lines(block: Block) -> list[tuple[str, str]]:
    """Fixed-width grid when it fits the page, otherwise one record per row ("  header: value" lines)."""
    cols = len(block.header)
    rows = [[str(c) for c in r] + [""] * (cols - len(r)) for r in block.rows]
    widths = [max([len(block.header[i])] + [len(r[i]) for r in rows]) for i in range(cols)]
    if sum(widths) + 3 * (cols - 1) <= WIDTH_CHARS:
        out = [("th", " | ".join(h.ljust(w) for h, w in zip(block.header, widths))),
               ("text", "-+-".join("-" * w for w in widths))]
        out += [("text", " | ".join(c.ljust(w) for c, w in zip(r, widths))) for r in rows]
        return out
    if cols == 2:  # key/value table with long values: wrap the value under its key
        key_w = min(max(len(r[0]) for r in rows) if rows else 10, 36)
        out = [("th", f"{block.header[0].ljust(key_w)} | {block.header[1]}")]
        for k, v in rows:
            wrapped = textwrap.wrap(v, WIDTH_CHARS - key_w - 3) or [""]
            out.append(("text", f"{k[:key_w].ljust(key_w)} | {wrapped[0]}"))
            out += [("text", f"{'':{key_w}} | {w}") for w in wrapped[1:]]
        return out
    out = []
    for r in rows:
        out.append(("th", f"{block.header[0]}: {r[0]}"))
        for h, c in zip(block.header[1:], r[1:]):
            out += [("text", line) for line in textwrap.wrap(f"{h}: {c}", WIDTH_CHARS, initial_indent="    ",
                                                             subsequent_indent="        ")]
    return out


class _Writer:
    def __init__(self, pdf, footer: str):
        self.pdf, self.footer = pdf, footer
        self.fig = None
        self.y = 0.0
        self.pages = 0

    def _new_page(self):
        from matplotlib.figure import Figure

        self.flush()
        self.fig = Figure(figsize=A4_PORTRAIT)
        self.y = 0.6

    def flush(self):
        if self.fig is not None:
            self._footer(self.fig, A4_PORTRAIT)
            self.pdf.savefig(self.fig)
            self.pages += 1
            self.fig = None

    def _footer(self, fig, size):
        self_page = self.pages + 1
        fig.text(0.5, 0.35 / size[1], f"{self.footer} · page {self_page}", ha="center", va="bottom", fontsize=6,
                 color="#666666", family=FONT)

    def line(self, style: str, text: str):
        size, weight, color, fstyle, height = _STYLE[style]
        if self.fig is None or self.y + height > A4_PORTRAIT[1] - 0.75:
            self._new_page()
        self.fig.text(0.6 / A4_PORTRAIT[0], 1 - self.y / A4_PORTRAIT[1], text, fontsize=size, weight=weight,
                      color=color, style=fstyle, family=FONT, va="top", ha="left")
        self.y += height

    def gap(self, inches: float = 0.08):
        if self.fig is not None:
            self.y += inches

    def wrapped(self, style: str, text: str, indent: str = ""):
        for line in textwrap.wrap(text, WIDTH_CHARS, initial_indent=indent,
                                  subsequent_indent=" " * len(indent)) or [""]:
            self.line(style, line)

    def image_page(self, path: str, caption: str):
        from matplotlib.figure import Figure
        from matplotlib.image import imread

        self.flush()
        fig = Figure(figsize=A4_LANDSCAPE)
        ax = fig.add_axes((0.04, 0.08, 0.92, 0.84))
        ax.imshow(imread(path))
        ax.set_axis_off()
        fig.text(0.5, 0.95, caption, ha="center", va="center", fontsize=10, weight="bold", color="#2a5d8f")
        self._footer(fig, A4_LANDSCAPE)
        self.pdf.savefig(fig)
        self.pages += 1


def weasyprint_available() -> bool:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError):  # OSError: the Python package is there but the Pango library is not
        return False
    return True


def write_pdf(sections: Sequence[Section], path: str | Path, *, title: str, banner: str,
              metadata: Mapping[str, str], html: str | None = None) -> tuple[Path, int]:
    """Write the PDF from ``html`` (the report document) with WeasyPrint, or from the sections with matplotlib
    when WeasyPrint is not available or no document is given; returns its path and its number of pages."""
    path = Path(path)
    if html is not None and weasyprint_available():
        import logging

        import weasyprint

        logging.getLogger("weasyprint").setLevel(logging.ERROR)
        logging.getLogger("fontTools").setLevel(logging.ERROR)
        document = weasyprint.HTML(string=html, base_url=str(path.parent)).render()
        document.write_pdf(path)
        return path, len(document.pages)
    return _write_pdf_matplotlib(sections, path, title=title, banner=banner, metadata=metadata)


def _write_pdf_matplotlib(sections: Sequence[Section], path: Path, *, title: str, banner: str,
                          metadata: Mapping[str, str]) -> tuple[Path, int]:
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path, metadata=dict(metadata)) as pdf:
        w = _Writer(pdf, footer=banner)
        w.line("title", title)
        w.wrapped("warning", banner)
        for sec in sections:
            images = [b for b in sec.blocks if b.kind == "image" and b.image and Path(b.image).is_file()]
            for b in images:
                w.image_page(b.image, b.text)
            w.gap(0.1)
            w.line("h2", sec.title)
            for b in sec.blocks:
                if b.kind == "image":
                    if b not in images:
                        w.line("na", f"Not available: image {b.text} was not found.")
                    else:
                        w.line("text", f"[{b.text}: see its own page]")
                elif b.kind in ("text", "na", "warning"):
                    w.wrapped(b.kind, b.text)
                elif b.kind == "list":
                    for item in b.items:
                        w.wrapped("text", item, indent="- ")
                elif b.kind == "table":
                    for style, text in _table_lines(b):
                        w.line(style, text[: WIDTH_CHARS + 4])
                w.gap(0.04)
        w.flush()
        pages = w.pages
    return path, pages
