"""The report's Markdown as one self-contained HTML page (figures inlined), so MLflow's
artifact viewer shows ``report.html`` with its figures and no other file."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["markdown_to_html"]


_INLINE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|`([^`]+)`"
                     r"|\*\*([^*]+)\*\*")
_CSS = ("body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;"
        "margin:24px auto;padding:0 16px;color:#1f2328;line-height:1.5}"
        "table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #d0d7de;"
        "padding:4px 10px;text-align:left}th{background:#f6f8fa}code{background:#f6f8fa;"
        "padding:1px 4px;border-radius:4px}img{max-width:100%;border:1px solid #d0d7de}"
        "h1,h2,h3{margin-top:1.4em}")


def markdown_to_html(text: str, folder: Path, title: str = "report") -> str:
    """The report's Markdown (headings, paragraphs, lists, tables, images, links, code,
    bold) as a standalone HTML page; images next to it are inlined as data URIs."""
    import html

    def inline(line: str) -> str:
        out, pos = [], 0
        for m in _INLINE.finditer(line):
            out.append(html.escape(line[pos:m.start()]))
            alt, src, label, href, code, bold = m.groups()
            if src is not None:
                out.append(_image(alt, src, folder))
            elif label is not None:
                out.append(f'<a href="{html.escape(href)}">{html.escape(label)}</a>')
            elif code is not None:
                out.append(f"<code>{html.escape(code)}</code>")
            else:
                out.append(f"<strong>{html.escape(bold)}</strong>")
            pos = m.end()
        out.append(html.escape(line[pos:]))
        return "".join(out)

    body: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in
                      re.split(r"(?<!\\)\|", row.strip())[1:-1]] for row in rows]
            head, rest = cells[0], [r for r in cells[1:] if not all(
                set(c) <= {"-", ":"} for c in r)]
            body.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head)
                        + "</tr></thead><tbody>" + "".join(
                            "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                            for r in rest) + "</tbody></table>")
        elif line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i][2:].strip())}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(
                    ("#", "|", "- ", "* ")):
                para.append(inline(lines[i].strip()))
                i += 1
            body.append("<p>" + " ".join(para) + "</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _image(alt: str, src: str, folder: Path) -> str:
    import base64
    import html

    path = folder / src
    if "/" not in src and path.suffix.lower() == ".png" and path.is_file():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'
