"""Jupyter display of programs, laws, estimates, fits and corrections (netsor.display): every object renders as
HTML that parses and holds what its text says, and LaTeX whose braces and environments balance."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

import limits
import netsor
from netsor.display import latex_lines, latex_number


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.text, self.rows = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.rows += tag == "tr"

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> _Collect:
    parser = _Collect()
    parser.feed(html)
    parser.close()
    assert not parser.stack, f"unclosed tags {parser.stack}"
    return parser


def balanced(latex: str) -> bool:
    depth = 0
    for match in re.finditer(r"(?<!\\)[{}]", latex):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            return False
    dollars = len(re.findall(r"(?<!\\)\$", latex))
    return depth == 0 and latex.count(r"\begin{") == latex.count(r"\end{") and dollars % 2 == 0


@pytest.fixture(scope="module")
def layer():
    return limits.attention_layer(seq_len=3, heads=1, inputs="gaussian", mask="causal", score_map="relu",
                                  score_bias=limits.score_maps.alibi(3, 0.5))


def test_program_renders_as_a_table_of_its_nodes(layer):
    html = layer.program._repr_html_()
    page = parsed(html)
    printed = str(layer.program).splitlines()[1:]
    assert page.rows == len(printed) + 1  # the header row and one per printed line
    text = "".join(page.text)
    assert "p_2,1" in text and "q_2·k_1 / sqrt(n)" in text and "ScalarFn" in text and "p_1,2" not in text
    tricky = netsor.Program("a<b & c")  # a name that is markup is escaped, not interpreted
    tricky.input("x<1>")
    assert "a<b & c" in "".join(parsed(tricky._repr_html_()).text) and "&lt;" in tricky._repr_html_()


def test_law_renders_its_description_as_text_and_math(layer):
    law = layer.law()
    page = parsed(law._repr_html_())
    assert "".join(page.text).replace("\n", "") == law.describe().replace("\n", "")
    latex = law._repr_latex_()
    assert balanced(latex) and latex.startswith("$$\\begin{aligned}") and latex.endswith("\\end{aligned}$$")
    assert r"\mathtt{K[y3,y3]} &=" in latex and r"\max" in latex  # each formula a row: name = LaTeX formula
    for line in law.describe(latex=True).splitlines():  # every line of the description is one row
        assert line.strip().split(" ")[0].replace("_", r"\_")[:6] in latex


def test_latex_lines_escape_text_and_keep_formulas():
    out = latex_lines(["Header with 50% & $ and Σ_X", "  x_1 = \\frac{a}{b}", "  K over (a) = \\left[1\\right]"])
    assert balanced(out)
    assert r"\text{Header with 50\% \& \$ and Σ\_X}" in out and r"\mathtt{x\_1} &= \frac{a}{b}" in out
    assert r"\text{K over (a)} = \left[1\right]" in out
    assert latex_number(1.234e-5) == r"1.234 \times 10^{-5}" and latex_number(0.5) == "0.5"


def test_estimates_and_fits_render():
    estimate = limits.kl(np.full(1000, 1.0), np.full(1000, 1.2), method="mixture")
    assert balanced(estimate._repr_latex_()) and r"\mathrm{KL} =" in estimate._repr_latex_()
    assert str(estimate) in "".join(parsed(estimate._repr_html_()).text)
    bound = limits.KLEstimate(1e-7, 1e-6, "mixture", 10, 10)
    assert r"\mathrm{KL} <" in bound._repr_latex_()  # under 2 SE: only the bound is shown
    widths = np.array([16, 64, 256, 1024])
    df = pd.DataFrame(dict(width=widths, seed=0, kl=3.0 / widths ** 2, se=0.01 * 3.0 / widths ** 2))
    fit = limits.fit_rate(df)
    assert balanced(fit._repr_latex_()) and r"\propto \mathrm{width}^{-2.000}" in fit._repr_latex_()
    assert str(fit) in "".join(parsed(fit._repr_html_()).text)
    constant = limits.fit_constant(df, prediction=(3.0, 0.01))
    text = "".join(parsed(constant._repr_html_()).text)
    assert "c = 3" in text and "predicted c = 3" in text


def test_correction_renders():
    prog = netsor.Program("chain")
    x = prog.input("x")
    y = prog.matrix("W2") @ (prog.matrix("W1") @ x)
    correction = netsor.finite_width_correction(prog, [y], size=2_000, seed=0)
    assert correction.describe().splitlines()[0] in "".join(parsed(correction._repr_html_()).text)
    assert balanced(correction._repr_latex_()) and r"\mathtt{c} &=" in correction._repr_latex_()
