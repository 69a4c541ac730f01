"""The report's page builder: report.md and report.html written side by side from the same calls.

Every text reaches the HTML through `html.escape` (data can hold `<script>`); pictures are inlined
as base64, so the page loads nothing from outside and runs no script. `Page.markdown` turns the
small Markdown subset that `checks.md` is written in (headings, pipe tables, bullets, paragraphs
with `code` spans) into real elements instead of a block of raw text.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import re
from pathlib import Path

import numpy as np

from medalist.core import config as C

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;font-size:.9em;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f2f2f2;padding:0 .2em;border-radius:3px}img{max-width:100%}
.muted{color:#777}
.gallery{display:flex;flex-wrap:wrap;gap:.6em;margin:.3em 0 1.2em}.gallery figure{margin:0;width:112px;font-size:.75em}
.gallery img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ccc;display:block}
"""

_CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a `\|` inside a cell is text, not a column border
_CODE = re.compile(r"`([^`]+)`")
_RULE = re.compile(r"\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*")  # |---|:--:| under a table's header


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[object]]

    def md(self) -> str:
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = ["| " + " | ".join(map(cell, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in self.rows]
        return "\n".join(out)

    def html(self) -> str:
        def td(v):
            cls = ' class="num"' if isinstance(v, (int, float, np.number)) or _numeric(v) else ""
            return f"<td{cls}>{html.escape(str(v))}</td>"

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    @classmethod
    def from_md(cls, lines: list[str]) -> Table:
        """A pipe table: header line, `|---|` rule, rows."""
        def cells(line: str) -> list[str]:
            inner = line.strip().removeprefix("|").removesuffix("|")
            return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(inner)]

        body = [cells(line) for line in lines[1:] if not _RULE.fullmatch(line)]
        return cls(cells(lines[0]), body)


@dataclasses.dataclass
class Thumb:
    """One picture of a gallery: PNG bytes (None: the image could not be read), a caption, and the
    original file under the project root (what the Markdown links to; None if outside it)."""

    png: bytes | None
    caption: str
    original: Path | None = None


def _numeric(v) -> bool:
    try:
        float(str(v).lstrip("+").removesuffix("%"))
        return True
    except ValueError:
        return False


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>: escaping leaves backticks alone, so the spans
    are found in the escaped text and their content stays escaped."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


class Page:
    """Builds report.md and report.html side by side, so both always say the same thing."""

    def __init__(self, md_dir: Path):
        self.md: list[str] = []
        self.html: list[str] = []
        self.md_dir = md_dir

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append("#" * level + " " + text)
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, muted: bool = False) -> None:
        self.md.append(text)
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{_inline(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items))
        self.html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")

    def table(self, t: Table) -> None:
        self.md.append(t.md())
        self.html.append(t.html())

    def image(self, path: Path, alt: str) -> None:
        self.md.append(f"![{alt}]({self._rel(path).as_posix()})")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def gallery(self, label: str, thumbs: list[Thumb]) -> None:
        """A labelled row of small pictures, each inline in the HTML (base64 PNG); in the Markdown,
        links to the original image files."""
        alt = lambda t: t.caption.replace("[", "(").replace("]", ")")  # noqa: E731 — brackets end a Markdown alt text
        links = [f"![{alt(t)}]({self._rel(t.original).as_posix()})" if t.original else t.caption for t in thumbs]
        self.md.append(f"{label}: " + " ".join(links))
        figs = []
        for t in thumbs:
            img = (f'<img alt="{html.escape(t.caption)}" src="data:image/png;base64,'
                   f'{base64.b64encode(t.png).decode("ascii")}">' if t.png else "")
            figs.append(f"<figure>{img}<figcaption>{html.escape(t.caption)}</figcaption></figure>")
        self.html.append(f"<p>{html.escape(label)}</p><div class=\"gallery\">{''.join(figs)}</div>")

    def _rel(self, path: Path) -> Path:
        """`path` (under the project root) as seen from the Markdown file's folder."""
        return Path(*([".."] * len(self.md_dir.relative_to(C.root()).parts)), Path(path).relative_to(C.root()))

    def markdown(self, text: str, below: int = 2) -> None:
        """A Markdown document as a subsection of this page: its title (`# …`) is dropped, since the
        caller heads the section, and its other headings sit under level `below`. Picture lines are
        dropped too: the caller inlines the pictures themselves."""
        blocks = re.split(r"\n\s*\n", text.strip())
        for block in blocks:
            lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("![")]
            while lines and lines[0].startswith("#"):
                level = len(lines[0]) - len(lines[0].lstrip("#"))
                if level > 1:
                    self.heading(lines[0][level:].strip(), min(level + below - 1, 6))
                lines = lines[1:]
            if not lines:
                continue
            if all(line.lstrip().startswith("|") for line in lines):
                self.table(Table.from_md(lines))
            elif all(line.startswith("- ") for line in lines):
                self.bullets([line[2:].strip() for line in lines])
            else:
                self.para(" ".join(line.strip() for line in lines))

    def render(self, title: str) -> tuple[str, str]:
        md = "\n\n".join([f"# {title}", *self.md]) + "\n"
        body = "\n".join(self.html)
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
                f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
        return md, page
