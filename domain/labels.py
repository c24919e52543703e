"""What codes leave the hub as: export files (CSV, NDJSON), PDF label sheets, ZPL for Zebra printers.
QR images themselves are in domain/qr.py."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from domain import qr
from domain.code_rules import Rendered
from domain.codes import BlockView, compiled

EXPORT_CHUNK = 1_000_000  # codes rendered per numpy pass when exporting


def export_header(fmt: str) -> bytes:
    return b"code,element_string,digital_link\n" if fmt == "csv" else b""


def export_chunks(view: BlockView, *, fmt: str, domain: str, first: int = 0, count: int | None = None,
                  chunk: int = EXPORT_CHUNK, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The block's codes [first, first+count) as CSV or NDJSON lines, streamed in chunks."""
    if fmt not in ("csv", "ndjson", "uri"):
        raise ValueError(f"format {fmt!r}: use csv, ndjson or uri")
    total = view.block.count - first if count is None else count
    rule = compiled(view.rule, view.item.gtin)
    yield export_header(fmt)
    done = 0
    while done < total:
        n = min(chunk, total - done)
        seqs = np.arange(view.block.first_seq + first + done, view.block.first_seq + first + done + n,
                         dtype=np.uint64)
        yield view.bound.render_lines(rule.numbers(seqs), fmt, domain)
        done += n
        if progress:
            progress(n)


# --- PDF label sheets ---------------------------------------------------------------------------------

@dataclass
class LabelLayout:
    """A sheet of labels (A4 by default): columns x rows, sizes in millimetres."""

    columns: int = 3
    rows: int = 7
    page_w: float = 210.0
    page_h: float = 297.0
    margin: float = 10.0
    qr_mm: float = 24.0


def label_lines(r: Rendered, product: str | None) -> list[str]:
    lines = [product] if product else []
    if r.elements:
        lines += [f"({ai}) {v}" for ai, v in r.elements]
    else:
        lines.append(r.value)
    return lines


def pdf_sheet(codes: list[Rendered], *, product: str | None = None, layout: LabelLayout | None = None) -> bytes:
    """Printable label sheets: per label the QR (drawn as vector modules) carrying the Digital Link URI,
    and the human-readable text (product, then each element as (AI) value)."""
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    lay = layout or LabelLayout()
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(lay.page_w * mm, lay.page_h * mm))
    c.setTitle("TraceHub labels")
    cell_w = (lay.page_w - 2 * lay.margin) / lay.columns
    cell_h = (lay.page_h - 2 * lay.margin) / lay.rows
    per_page = lay.columns * lay.rows
    for i, r in enumerate(codes):
        if i and i % per_page == 0:
            c.showPage()
        k = i % per_page
        col, row = k % lay.columns, k // lay.columns
        x0 = (lay.margin + col * cell_w) * mm
        y_top = (lay.page_h - lay.margin - row * cell_h) * mm
        m = qr.matrix(r.digital_link or r.value)
        n = m.shape[0]
        module = lay.qr_mm * mm / (n + 8)  # four modules of quiet zone each side
        qx, qy = x0 + 2 * mm, y_top - 2 * mm - lay.qr_mm * mm
        c.setFillColorRGB(0, 0, 0)
        for y, line in enumerate(m):
            xs = np.flatnonzero(line)
            if not len(xs):
                continue
            # one rectangle per run of dark modules in a row
            starts = xs[np.r_[True, np.diff(xs) > 1]]
            ends = xs[np.r_[np.diff(xs) > 1, True]]
            for s, e in zip(starts, ends, strict=True):
                c.rect(qx + (4 + s) * module, qy + (n + 4 - 1 - y) * module, (e - s + 1) * module, module,
                       stroke=0, fill=1)
        tx = qx + lay.qr_mm * mm + 2 * mm
        c.setFont("Helvetica", 6.5)
        ty = y_top - 6 * mm
        for line in label_lines(r, product):
            c.drawString(tx, ty, line[:34])
            ty -= 3.2 * mm
    c.save()
    return buf.getvalue()


# --- ZPL (Zebra) ------------------------------------------------------------------------------------

def _zpl_field(text: str) -> str:
    # ^FH_ lets the field carry ^ ~ and _ as hex escapes; everything else goes through as is
    return "^FH_^FD" + text.replace("_", "_5F").replace("^", "_5E").replace("~", "_7E") + "^FS"


def zpl_label(r: Rendered, *, product: str | None = None, dpmm: int = 8) -> str:
    """One ZPL II label: the QR (model 2, error level M) with the Digital Link URI, the human-readable
    text, and for an SSCC the GS1-128 barcode (^BC mode D adds FNC1 and strips the parentheses)."""
    out = ["^XA", "^CI28", "^LH0,0"]
    out.append(f"^FO{4 * dpmm},{4 * dpmm}^BQN,2,4" + _zpl_field("MA," + (r.digital_link or r.value)))
    y = 4 * dpmm
    for line in label_lines(r, product):
        out.append(f"^FO{34 * dpmm},{y}^A0N,{3 * dpmm},{3 * dpmm}" + _zpl_field(line))
        y += 4 * dpmm
    if r.elements and r.elements[0][0] == "00":
        out.append(f"^FO{4 * dpmm},{36 * dpmm}^BY3^BCN,{15 * dpmm},Y,N,N,D" + _zpl_field(r.element_string))
    out.append("^XZ")
    return "\n".join(out) + "\n"
