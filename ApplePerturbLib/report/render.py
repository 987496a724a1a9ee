"""Report blocks, rendered once as HTML (figures embedded as base64 PNG) and once as Markdown, and number formatting."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass
class Block:
    """One element of the report: "heading" (level, text), "paragraph" (text),
    "bullets" (items), "table" (header, rows) or "figure" (name, png, caption)."""

    kind: str
    text: str = ""
    level: int = 2
    items: Sequence[str] = ()
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    name: str = ""
    png: bytes = b""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """Return a complete HTML page; figures are embedded as base64 PNG data."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
             "table{border-collapse:collapse;margin:0.8em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
             "text-align:left;vertical-align:top}th{background:#eee}img{max-width:100%}"
             "figcaption{font-size:0.9em;color:#444}")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{style}</style>", "</head>", "<body>"]
    for block in blocks:
        parts.append(_block_html(block))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _block_html(block: Block) -> str:
    if block.kind == "heading":
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if block.kind == "paragraph":
        return f"<p>{html.escape(block.text)}</p>"
    if block.kind == "bullets":
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>"
    if block.kind == "table":
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                       for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    encoded = base64.b64encode(block.png).decode("ascii")
    return (f'<figure><img alt="{html.escape(block.text)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(block.text)}</figcaption></figure>")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Return the report as Markdown; each figure links to ``<block.name>`` beside the file."""
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines += ["#" * block.level + " " + block.text, ""]
        elif block.kind == "paragraph":
            lines += [block.text, ""]
        elif block.kind == "bullets":
            lines += [f"- {item}" for item in block.items] + [""]
        elif block.kind == "table":
            lines.append("| " + " | ".join(_markdown_cell(cell) for cell in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.text}]({block.name})", "", f"*{block.text}*", ""]
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- number formatting ------------------------------------------------------------------


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "infinite" if value > 0 else "-infinite"
    magnitude = abs(value)
    if magnitude != 0.0 and (magnitude >= 1000 or magnitude < 0.001):
        text = f"{value:+.3g}" if signed else f"{value:.3g}"
    else:
        text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text


def _range(interval) -> str:
    if interval is None or interval.low is None:
        return "n/a"
    return f"{_number(interval.low)} to {_number(interval.high)}"


def _with_range(interval, signed: bool = False) -> str:
    if interval is None:
        return "n/a"
    text = _number(interval.value, signed)
    return text if interval.low is None else f"{text} ({_range(interval)})"


def _pair(entry: dict, with_apple: bool) -> str:
    base = _number(entry["base"].value)
    return f"{base}, {_number(entry['apple'].value)}" if with_apple else base
