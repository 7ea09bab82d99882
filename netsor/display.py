"""Rich display in Jupyter: the one place that turns the engine's text and formulas into HTML and LaTeX
(`_repr_html_`, `_repr_latex_` of programs, laws, estimates and fits call these)."""
from __future__ import annotations

import html
import re

__all__ = ["html_block", "html_description", "html_table", "latex_lines", "latex_number"]


def html_block(title: str, text: str) -> str:
    """A bold title over preformatted text (every character escaped)."""
    return (f"<div><b>{html.escape(title)}</b><pre style=\"margin-top: 0.3em\">{html.escape(text)}</pre></div>")


def html_description(text: str) -> str:
    """A multi-line description (`describe()`) as HTML: its first line the title, the rest preformatted."""
    title, _, body = text.partition("\n")
    return html_block(title, body)


def html_table(caption: str, header, rows) -> str:
    """An HTML table (cells escaped) with a caption."""
    head = "".join(f"<th style=\"text-align: left\">{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style=\"text-align: left\">{html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return (f"<table><caption style=\"text-align: left\"><b>{html.escape(caption)}</b></caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_TEXT_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
                  "%": r"\%", "_": r"\_", "^": r"\^{}", "~": r"\sim{}"}
_FORMULA = re.compile(r"^\s*(?P<name>[^\s=]+) = (?P<rhs>.+)$")


def _text(line: str) -> str:
    return r"\text{" + "".join(_TEXT_SPECIALS.get(c, c) for c in line.strip()) + "}"


def _name(name: str) -> str:
    return r"\mathtt{" + "".join(_TEXT_SPECIALS.get(c, c) for c in name) + "}"


def latex_lines(lines) -> str:
    """Display math of `describe(latex=True)`-style lines: "name = formula" lines as aligned equations (the
    formula is LaTeX already), a line ending in "= <LaTeX matrix>" as its text and the matrix, others as text."""
    rows = []
    for line in lines:
        match = _FORMULA.match(line)
        if match and not match.group("name").endswith(":"):
            rows.append(f"{_name(match.group('name'))} &= {match.group('rhs')}")
        elif r" = \left[" in line:
            text, matrix = line.split(r" = \left[", 1)
            rows.append(f"& {_text(text)} = \\left[{matrix}")
        elif line.strip():
            rows.append(f"& {_text(line)}")
    return "$$\\begin{aligned}" + r" \\ ".join(rows) + "\\end{aligned}$$"


def latex_number(x: float, digits: int = 4) -> str:
    """x in LaTeX scientific notation: 1.23 \\times 10^{-4}."""
    text = f"{x:.{digits}g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa} \\times 10^{{{int(exponent)}}}"
