"""MATH-style answers: LaTeX normalisation and equivalence, positives next to hard negatives
(checker.md §2, §3). Symbolic cases run in the worker pool."""

from __future__ import annotations


from rewards import check_batch


def box(s: str) -> str:
    return f"So the final answer is $\\boxed{{{s}}}$."


# (category, predicted answer, gold, expected status)
CASES = [
    # latex_frac
    ("latex_frac", "\\frac{1}{2}", "0.5", "correct"),  # fraction vs decimal, exact
    ("latex_frac", "\\dfrac{14}{3}", "\\frac{14}{3}", "correct"),  # \dfrac
    ("latex_frac", "\\tfrac12", "\\frac{1}{2}", "correct"),  # \tfrac and \frac12 shorthand
    ("latex_frac", "\\frac{3}{5}.", "\\frac35", "correct"),  # trailing period inside the box
    ("latex_frac", "-\\frac{1}{2}", "\\frac{-1}{2}", "correct"),  # sign placement
    ("latex_frac", "\\frac{2}{4}", "\\frac{1}{2}", "correct"),  # unreduced equals reduced
    ("latex_frac", "\\frac{1}{3}", "0.33", "wrong"),  # approximation is not the fraction
    ("latex_frac", "\\frac{1}{2}", "\\frac{2}{1}", "wrong"),  # inverted
    # latex_sqrt
    ("latex_sqrt", "2\\sqrt{3}", "\\sqrt{12}", "correct"),  # simplified radical
    ("latex_sqrt", "\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", "correct"),  # rationalised
    ("latex_sqrt", "\\sqrt3", "\\sqrt{3}", "correct"),  # brace-less argument
    ("latex_sqrt", "\\sqrt[3]{2}", "2^{1/3}", "correct"),  # cube root as a power
    ("latex_sqrt", "1.414", "\\sqrt{2}", "wrong"),  # approximation of an irrational
    ("latex_sqrt", "\\sqrt{3}", "3", "wrong"),  # dropped root
    # latex_text
    ("latex_text", "\\text{Evelyn}", "Evelyn", "correct"),  # text wrapper
    ("latex_text", "\\text{(C)}", "C", "correct"),  # choice in text and parentheses
    ("latex_text", "evelyn", "\\text{Evelyn}", "correct"),  # case-insensitive
    ("latex_text", "\\text{Bob}", "\\text{Evelyn}", "wrong"),  # different name
    # degrees
    ("degrees", "30^\\circ", "30", "correct"),  # ^\circ
    ("degrees", "30^{\\circ}", "30", "correct"),  # ^{\circ}
    ("degrees", "30°", "30", "correct"),  # Unicode degree sign
    ("degrees", "60^\\circ", "30", "wrong"),  # different angle
    # mixed_numbers
    ("mixed_numbers", "2\\frac{1}{2}", "\\frac{5}{2}", "correct"),  # LaTeX mixed number
    ("mixed_numbers", "7 3/4", "\\frac{31}{4}", "correct"),  # plain mixed number
    ("mixed_numbers", "2\\frac{1}{2}", "1", "wrong"),  # never the product 2 * 1/2
    # symbolic
    ("symbolic", "2x+3", "3+2x", "correct"),  # commuted
    ("symbolic", "x^{-1}", "\\frac{1}{x}", "correct"),  # negative power
    ("symbolic", "x^2+2x+1", "(x+1)^2", "correct"),  # expanded square
    ("symbolic", "(x-1)^2", "x^2-1", "wrong"),  # not a difference of squares
    ("symbolic", "q-p", "p-q", "wrong"),  # sign
    ("symbolic", "\\frac{x+1}{2}", "\\frac{x}{2}+\\frac{1}{2}", "correct"),  # split fraction
    # equations
    ("equations", "x=3", "3", "correct"),  # assignment vs value
    ("equations", "k=-2", "-2", "correct"),  # negative value
    ("equations", "y = 2x + 3", "y = 3 + 2x", "correct"),  # same equation
    ("equations", "x = 2 + 3 = 5", "5", "correct"),  # a chain means its last value
    ("equations", "x=-3", "3", "wrong"),  # sign
    ("equations", "2x + 4y = 8", "x + 2y = 4", "correct"),  # multiple of the same equation
    ("equations", "x + 2y = 5", "x + 2y = 4", "wrong"),  # different constant
    # sets_lists
    ("sets_lists", "5, -2", "-2, 5", "correct"),  # unordered solutions
    ("sets_lists", "\\{1, 2\\}", "\\{2, 1\\}", "correct"),  # set order
    ("sets_lists", "\\pm 3", "3, -3", "correct"),  # plus-minus expands
    ("sets_lists", "5", "5, -2", "wrong"),  # missing element
    ("sets_lists", "5, -2, 1", "5, -2", "wrong"),  # extra element
    ("sets_lists", "\\varnothing", "\\emptyset", "correct"),  # empty set spellings
    # tuples_ordered
    ("tuples_ordered", "(1, 2)", "(1,2)", "correct"),  # spacing
    ("tuples_ordered", "(2, 1)", "(1, 2)", "wrong"),  # order matters for points
    ("tuples_ordered", "\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", "correct"),  # \left/\right
    ("tuples_ordered", "(1, 2, 3)", "(1, 2)", "wrong"),  # length
    # intervals
    ("intervals", "[0, 5)", "[0,5)", "correct"),  # half-open
    ("intervals", "[0, 5]", "(0, 5)", "wrong"),  # closed vs open
    ("intervals", "(-\\infty, 2) \\cup (3, \\infty)", "(3, \\infty) \\cup (-\\infty, 2)", "correct"),  # union order
    ("intervals", "(-\\infty, \\infty)", "\\mathbb{R}", "correct"),  # all reals
    ("intervals", "(0, +\\infty)", "(0, \\infty)", "correct"),  # +infinity
    ("intervals", "(0, 5]", "(0, 5)", "wrong"),  # right bracket
    # matrices
    ("matrices", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", "correct"),  # spacing
    ("matrices", "\\begin{pmatrix} \\frac{1}{2} & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{bmatrix} 0.5 & 0 \\\\ 0 & 1 \\end{bmatrix}", "correct"),  # values
    ("matrices", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "wrong"),  # transpose
    ("matrices", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "wrong"),  # transpose
    # constants_pi
    ("constants_pi", "2\\pi", "2 \\pi", "correct"),  # spacing
    ("constants_pi", "\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", "correct"),  # coefficient form
    ("constants_pi", "6.28", "2\\pi", "wrong"),  # approximation
    ("constants_pi", "3.14", "\\pi", "wrong"),  # no pi -> 3.14 retry
    # complex
    ("complex", "6-5i", "-5i+6", "correct"),  # commuted
    ("complex", "i", "-i", "wrong"),  # conjugate sign
    ("complex", "\\frac{1+i}{2}", "\\frac12 + \\frac{i}{2}", "correct"),  # split
    # latex_formatting
    ("latex_formatting", "\\displaystyle\\frac{1}{4}", "\\frac14", "correct"),  # \displaystyle
    ("latex_formatting", "\\mathbf{7}", "7", "correct"),  # \mathbf
    ("latex_formatting", "0.\\overline{3}", "\\frac{1}{3}", "correct"),  # repeating decimal
    ("latex_formatting", "0.125", "\\frac{1}{8}", "correct"),  # terminating decimal is exact
    ("latex_formatting", "70{,}000", "70000", "correct"),  # {,} thousands
    ("latex_formatting", "1011_2", "1011_2", "correct"),  # base subscript, literal
    ("latex_formatting", "1011_2", "11", "wrong"),  # literal, not converted
    # money_latex
    ("money_latex", "\\$32,\\!348", "32348", "correct"),  # money with \!
    ("money_latex", "\\$1.50", "1.5", "correct"),  # cents
    ("money_latex", "10\\%", "10", "correct"),  # percent in LaTeX
    ("money_latex", "5\\text{ cm}^2", "5", "correct"),  # unit in \text
    ("money_latex", "5 cm", "5", "correct"),  # plain unit word after a number
    # neg_math_close
    ("neg_math_close", "\\frac{1}{2004!}", "\\frac{1}{2006!}", "wrong"),  # tiny values differ
    ("neg_math_close", "2^{100}", "2^{100}+1", "wrong"),  # huge values differ by one
    ("neg_math_close", "10^{-7}", "2 \\cdot 10^{-7}", "wrong"),  # small numbers are not rounded
    ("neg_math_close", "\\pm 2021", "2021", "wrong"),  # +- is two answers
]


def test_math_cases() -> None:
    # one batch: the symbolic cases share the worker pool
    vs = check_batch([box(c[1]) for c in CASES], [c[2] for c in CASES], datasets="math")
    bad = [(c, v.status, v.error) for c, v in zip(CASES, vs) if v.status != c[3]]
    assert not bad, "\n".join(map(str, bad))


def test_math_has_no_last_number_fallback() -> None:
    vs = check_batch(["The area is 12 square units."], ["12"], datasets="math")
    assert vs[0].status == "no_answer"
