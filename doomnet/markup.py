"""A report as a list of blocks (headings, paragraphs, lists, tables, figures, code), rendered
to Markdown (figures beside it) and to one self-contained HTML file (figures embedded as
base64 PNGs, inline CSS: it opens offline). Inline markup in text: `code` and **bold**."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    """Blocks in order; `markdown()` and `html()` render the same content."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def image(self, file: str, alt: str) -> None:
        self.blocks.append(("img", file, alt))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, first_line: str = "") -> str:
        out = [first_line, ""] if first_line else []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(_cell(h) for h in header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{Path(block[1]).stem}]({block[1]})", "", f"*{block[2]}*", ""]
            elif kind == "code":
                out += ["```", block[1], "```", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self, folder: Path, title: str) -> str:
        """One HTML file; figures are read from `folder` and embedded."""
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in block[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(block[2])}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{_inline(block[2])}'
                    "</figcaption></figure>"
                )
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:72rem;"
    "margin:2rem auto;padding:0 1rem;line-height:1.45;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}"
    "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}"
    "code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}"
    "pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}"
    "figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.85rem;color:#555}"
)


def _cell(text: object) -> str:
    """A Markdown table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Escape, then `code` and **bold**."""
    parts = re.split(r"(`[^`]*`)", str(text))
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)
