"""External-style cases (issue 20): the kinds other checkers' test suites exercise, written by us,
each positive next to its hard negative, plus every hedge form (checker.md §1-§3, docs/checker.md).

Kinds: 1 boxes joined into one answer; 2 sets; 3 equations whose left side is a name; 4 an
inequality and its interval; 5 a relation scaled by -1; 6 formatting; 7 answer spans that run over
a sentence or several `$…$`; hedges; numbers glued into words (GSM8K); and a few more kinds read in
the Hendrycks MATH, Qwen2.5-Math and Math-Verify suites (matrix arithmetic, a computation `= value`,
doubled backslashes, `\\approx`).
"""

from __future__ import annotations

import pytest

from rewards import check_batch

# (category, completion, gold, dataset, expected status)
CASES = [
    # 1. several boxes joined by "and", "," or a connective in LaTeX form one answer
    ("boxes_joined", "Thus $\\boxed{2} \\quad \\text{and} \\quad \\boxed{5}$.", "2, 5", "math", "correct"),  # \quad \text{and} \quad
    ("boxes_joined", "The roots are \\(\\boxed{2}\\) and \\(\\boxed{5}\\).", "5, 2", "math", "correct"),  # \) and \(, any order
    ("boxes_joined", "So \\boxed{1}, \\boxed{2}, \\boxed{3}.", "\\{1, 2, 3\\}", "math", "correct"),  # comma-joined boxes vs a set
    ("boxes_joined", "$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2, 2), (6, 2)", "math", "correct"),  # two points
    ("boxes_joined", "\\boxed{3} for part (a) and \\boxed{7} for part (b).", "3, 7", "math", "correct"),  # part labels
    ("boxes_joined", "Then $x = \\boxed{3}$ and $y = \\boxed{-1}$.", "(3, -1)", "math", "correct"),  # labelled boxes vs a point
    ("boxes_joined", "\\(y_1 = \\boxed{x^2 + 1}\\) and \\(y_2 = \\boxed{2x}\\)", "x^2+1, 2x", "math", "correct"),  # labels inside delimiters
    ("boxes_joined", "Thus $\\boxed{2} \\quad \\text{and} \\quad \\boxed{5}$.", "2", "math", "wrong"),  # two answers are not the single gold
    ("boxes_joined", "So \\boxed{2}. Wait, that is wrong; it is \\boxed{5}.", "2, 5", "math", "wrong"),  # a correction is not a join
    ("boxes_joined", "\\boxed{1} then we compute more and get \\boxed{2}", "1, 2", "math", "wrong"),  # prose between boxes: the last wins
    # 2. `\{a, b\}` and bare `{a, b}` are sets: equal to a list of the same elements
    ("sets", "The answer is $\\boxed{\\{1, 2\\}}$.", "1, 2", "math", "correct"),  # set vs list
    ("sets", "The answer is $\\boxed{\\{-3, 3\\}}$.", "\\pm 3", "math", "correct"),  # set vs plus-minus
    ("sets", "The answer is $\\boxed{{1, 2, 3}}$.", "3, 2, 1", "math", "correct"),  # bare braces are only grouping
    ("sets", "We get $\\{2, 4\\}$ as the answer, so the answer is $\\{2, 4\\}$.", "4, 2", "math", "correct"),  # set after a phrase
    ("sets", "The answer is $\\boxed{\\{1\\pm\\sqrt{5}, -2\\}}$.", "-2, 1+\\sqrt{5}, 1-\\sqrt{5}", "math", "correct"),  # symbolic elements
    ("sets", "The answer is $\\boxed{\\{1, 2\\}}$.", "1, 2, 3", "math", "wrong"),  # missing element
    ("sets", "The answer is $\\boxed{\\{1, 2\\}}$.", "(1, 2)", "math", "wrong"),  # a set is not an ordered pair
    ("sets", "The answer is $\\boxed{{1, 3}}$.", "(3, 1)", "math", "wrong"),  # a bare list in the other order is not the point
    # 3. an equation whose left side is a name reduces to its right side
    ("equation_names", "So $\\boxed{(p, q) = (3, 2)}$.", "(3, 2)", "math", "correct"),  # tuple of variables on the left
    ("equation_names", "So $\\boxed{(3, 2)}$.", "(p,q)=(3,2)", "math", "correct"),  # the gold names the tuple
    ("equation_names", "So $\\boxed{(2, 3)}$.", "(p,q)=(3,2)", "math", "wrong"),  # order still matters
    ("equation_names", "So $\\boxed{11:21}$.", "V_1:V_2=11:21", "math", "correct"),  # ratio name
    ("equation_names", "So $\\boxed{21:11}$.", "V_1:V_2=11:21", "math", "wrong"),  # inverted ratio
    ("equation_names", "So $\\boxed{5}$.", "|AB| = 5", "math", "correct"),  # a length |AB|
    ("equation_names", "So $\\boxed{\\frac{2}{3}}$.", "\\frac{AE}{EC}=\\frac{2}{3}", "math", "correct"),  # fraction of segment names
    ("equation_names", "So $\\boxed{7}$.", "\\overline{BC} = 7", "math", "correct"),  # \overline{BC}
    ("equation_names", "So $\\boxed{1}$.", "x+z=1", "math", "wrong"),  # x + z = 1 is an equation, not 1
    ("equation_names", "So $\\boxed{7}$.", "2x+y=7", "math", "wrong"),  # 2x + y = 7 likewise
    ("equation_names", "So $\\boxed{(5, 2), (7, 2)}$.", "p=5,q=2;p=7,q=2", "math", "correct"),  # `;` between groups of assignments
    ("equation_names", "So $\\boxed{(5, 2)}$.", "p=5,q=2;p=7,q=2", "math", "wrong"),  # a solution missing
    ("equation_names", "So $\\boxed{4, 5}$.", "AB=4, CD=5", "math", "correct"),  # named lengths
    # 4. an inequality in one variable and its interval; `x \in S` and S
    ("rel_interval", "The range is $\\boxed{(0, 1)}$.", "0 < f(x) < 1", "math", "correct"),  # chain vs open interval
    ("rel_interval", "The range is $\\boxed{[0, 1]}$.", "0 < f(x) < 1", "math", "wrong"),  # brackets must match
    ("rel_interval", "So $\\boxed{0 < x < 1}$.", "(0,1)", "math", "correct"),  # gold interval, predicted chain
    ("rel_interval", "So $\\boxed{[2, \\infty)}$.", "x \\ge 2", "math", "correct"),  # one-sided
    ("rel_interval", "So $\\boxed{(2, \\infty)}$.", "x \\ge 2", "math", "wrong"),  # open vs closed end
    ("rel_interval", "So $\\boxed{x \\in [-2, 7]}$.", "[-2, 7]", "math", "correct"),  # x \in S is S
    ("rel_interval", "So $\\boxed{x \\in [-2, 7]}$.", "-2 \\le x \\le 7", "math", "correct"),  # both directions
    ("rel_interval", "So $\\boxed{-2 \\le x \\le 7}$.", "x \\in [-2, 7]", "math", "correct"),  # symmetric
    ("rel_interval", "So $\\boxed{x \\in (-2, 7)}$.", "[-2, 7]", "math", "wrong"),  # open vs closed
    ("rel_interval", "So $\\boxed{(-\\infty, 1)}$.", "|x| < 1", "math", "wrong"),  # |x| < 1 is not x < 1
    ("rel_interval", "So $\\boxed{(-\\infty, 1)}$.", "x < 1", "math", "correct"),  # ray
    ("rel_interval", "So $\\boxed{(-2, 2)}$.", "|x| < 2", "math", "correct"),  # an absolute value bound
    ("rel_interval", "So $\\boxed{z \\in [-\\frac{3}{2}, -1] \\cup [1, \\frac{3}{2}]}$.", "1 \\le |z| \\le \\frac{3}{2}", "math", "correct"),  # two pieces
    ("rel_interval", "So $\\boxed{z \\in [-\\frac{3}{2}, -1) \\cup [1, \\frac{3}{2}]}$.", "1 \\le |z| \\le \\frac{3}{2}", "math", "wrong"),  # one bracket off
    # 5. a relation multiplied by -1 (a positive factor keeps the relation)
    ("rel_scaled", "So $\\boxed{-x > -1}$.", "x < 1", "math", "correct"),  # times -1, sign flipped
    ("rel_scaled", "So $\\boxed{-x \\ge -1}$.", "x \\le 1", "math", "correct"),  # non-strict
    ("rel_scaled", "So $\\boxed{-x < -1}$.", "x < 1", "math", "wrong"),  # sign not flipped: x > 1
    ("rel_scaled", "So $\\boxed{x > -1}$.", "x < 1", "math", "wrong"),  # different relation
    ("rel_scaled", "So $\\boxed{5 \\geq x}$.", "x \\leq 5", "math", "correct"),  # written backwards
    ("rel_scaled", "So $\\boxed{x \\neq 3}$.", "3 \\ne x", "math", "correct"),  # not-equal is symmetric
    # 6. formatting
    ("formatting", "The answer is $\\boxed{11,\\! 111,\\! 100}$.", "11111100", "math", "correct"),  # ,\! then a space
    ("formatting", "The final answer is $14 {, }916$.", "14916", "math", "correct"),  # spaced {, }
    ("formatting", "The answer is 28 pct.", "28\\%", "math", "correct"),  # pct
    ("formatting", "The answer is 2.8 pct.", "28\\%", "math", "wrong"),  # pct keeps the number
    ("formatting", "So $\\boxed{(0;-2;6)}$.", "(0, -2, 6)", "math", "correct"),  # ; inside a tuple
    ("formatting", "So $\\boxed{(12,102)}$.", "(12, 102)", "math", "correct"),  # not the number 12102
    ("formatting", "So $\\boxed{(2,12) \\cup (12,102)}$.", "(2, 12) \\cup (12, 102)", "math", "correct"),  # union of intervals
    ("formatting", "So $\\boxed{(12,102)}$.", "12102", "math", "wrong"),  # a pair is not a number
    ("formatting", "So $\\boxed{12,102}$.", "12102", "math", "correct"),  # a bare grouped number still is
    ("formatting", "So $\\boxed{x \\lt 3}$.", "x < 3", "math", "correct"),  # \lt
    ("formatting", "So $\\boxed{x \\gt 5}$.", "x > 5", "math", "correct"),  # \gt
    ("formatting", "So $\\boxed{x \\gt 5}$.", "x < 5", "math", "wrong"),  # \gt is not <
    ("formatting", "So $\\boxed{5\\,\\text{m}^2}$.", "5", "math", "correct"),  # unit after a thin space
    # 7. answer spans after "Final Answer:" / "The final answer is"
    ("answer_span", "Final Answer: The largest $n$ is $34$. I hope it is correct.", "34", "math", "correct"),  # value after "is"
    ("answer_span", "Final Answer: The volume of $ABCD$ is 120. I hope it is correct.", "120", "math", "correct"),  # math name, then the value
    ("answer_span", "Final Answer: The volume of $ABCD$ is 120. I hope it is correct.", "12", "math", "wrong"),  # hard negative
    ("answer_span", "Final Answer: The final answer is $12$ and $13$. I hope it is correct.", "12, 13", "math", "correct"),  # two spans, one answer
    ("answer_span", "The final answer is $x = 3$ and $y = 4$.", "(3, 4)", "math", "correct"),  # assignments vs a point
    ("answer_span", "The answer is $5$, since $2 + 3 = 5$.", "5", "math", "correct"),  # explanation after the answer
    ("answer_span", "The answer is $5$, since $2 + 3 = 5$.", "2", "math", "wrong"),  # the explanation is not the answer
    ("answer_span", "The answer is $28$ percent.", "28", "math", "correct"),  # unit word after the math
    ("answer_span", "Final Answer: It takes Jane 3 hours.", "3", "math", "correct"),  # one number in a prose sentence
    ("answer_span", "Answer $ \\frac{7}{2} $", "3.5", "math", "correct"),  # "Answer" followed directly by math
    ("answer_span", "Thus $x \\le 2$ is our answer.", "x \\le 2", "math", "correct"),  # the statement follows the math
    # hedges: more than one candidate scores 0 (no_answer), never its first or last candidate
    ("hedged", "The answer is $12$ or $13$.", "12", "math", "no_answer"),  # two math spans joined by or
    ("hedged", "The answer is $12$ or $13$.", "13", "math", "no_answer"),  # not the last one either
    ("hedged", "The answer is \\(12\\) or \\(13\\).", "12", "math", "no_answer"),  # \( \) delimiters
    ("hedged", "The answer is $$12$$ or $$13$$", "12", "math", "no_answer"),  # display math
    ("hedged", "Final answer: $12$ (or possibly $15$)", "12", "math", "no_answer"),  # parenthetical alternative
    ("hedged", "\\boxed{12} \\text{ or } \\boxed{13}", "12", "math", "no_answer"),  # boxes joined by \text{ or }
    ("hedged", "$\\boxed{12}$ or $\\boxed{13}$", "13", "math", "no_answer"),  # boxes in their own delimiters
    ("hedged", "\\boxed{12}, maybe \\boxed{13}", "13", "math", "no_answer"),  # maybe
    ("hedged", "The answer is $12$, possibly $13$.", "12", "math", "no_answer"),  # possibly
    ("hedged", "The answer is \\boxed{12} (or possibly 15).", "12", "math", "no_answer"),  # alternative after the box
    ("hedged", "The answer is 12. Or maybe 13.", "12", "gsm8k", "no_answer"),  # alternative in the next sentence
    ("hedged", "Final answer: 12 (or possibly 15)", "12", "gsm8k", "no_answer"),  # plain-text parenthetical
    ("hedged", "The answer is 12 or 13.", "12", "gsm8k", "no_answer"),  # plain text
    ("hedged", "The final answer is $12$ and $13$.", "12", "gsm8k", "no_answer"),  # two numbers are not one answer
    ("hedged", "The final answer is $12$ and $13$.", "12", "math", "wrong"),  # a two-element answer, not 12
    ("hedged", "The answer is $x = 2$ or $x = 3$.", "2, 3", "math", "correct"),  # solutions of one variable: a list
    ("hedged", "The answer is \\boxed{12}. Either way, we are done.", "12", "math", "correct"),  # a word after the answer is no hedge
    # numbers glued into words are labels (GSM8K)
    ("glued_number", "The answer is AZYUK2A", "2", "gsm8k", "no_answer"),  # digits inside letters
    ("glued_number", "The answer is B2.", "2", "gsm8k", "no_answer"),  # a grid cell
    ("glued_number", "So the code is AZYUK2A.", "2", "gsm8k", "no_answer"),  # last-number fallback skips it too
    ("glued_number", "The answer is 5km.", "5", "gsm8k", "correct"),  # a unit glued to the number
    ("glued_number", "The answer is 5k.", "5", "gsm8k", "no_answer"),  # 5k is not 5
    ("glued_number", "She ends in 3rd place.", "3", "gsm8k", "correct"),  # an ordinal suffix
    # more kinds from other suites (Hendrycks MATH, Qwen2.5-Math, Math-Verify)
    ("more_kinds", "The answer is $\\boxed{\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}}$.",
     "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}", "math", "correct"),  # matrix arithmetic
    ("more_kinds", "The answer is $\\boxed{\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}}$.",
     "\\begin{pmatrix}6 & 8 \\\\ 10 & 13\\end{pmatrix}", "math", "wrong"),  # one entry off
    ("more_kinds", "So $\\boxed{\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}}$.", "\\frac56", "math", "correct"),  # a computation means its value
    ("more_kinds", "So $\\boxed{7 = 11a + c}$.", "11a+c", "math", "wrong"),  # an equation with unknowns is not its right side
    ("more_kinds", "So $\\boxed{x = \\frac{1}{3} \\approx 0.33}$.", "\\frac13", "math", "correct"),  # \approx after the exact value
    ("more_kinds", "So $\\boxed{x \\approx 0.33}$.", "\\frac13", "math", "wrong"),  # an approximation alone is not exact
    ("more_kinds", "So $\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}$.", "(3, \\frac{\\pi}{2})", "math", "correct"),  # doubled backslashes
    ("more_kinds", "So $\\boxed{\\tfrac{1}{2} +\\! \\frac1{72}}$.", "\\dfrac{1}{2} + \\frac{1}{72}", "math", "correct"),  # \! and \frac1{72}
    ("more_kinds", "So $\\boxed{-34x-45y+20z-100=0}$.", "34x+45y-20z+100=0", "math", "correct"),  # equation times -1
    ("more_kinds", "So $\\boxed{5x - 7y + 11z + 4 = 0}$.", "x + y - z + 2 = 0", "math", "wrong"),  # not a multiple
    ("more_kinds", "So $\\boxed{(+5)(b+2)}$.", "(a+5)(b+2)", "math", "wrong"),  # a dropped variable
    ("more_kinds", "So $\\boxed{\\begin{pmatrix}-\\frac{7}{4}&-2\\\\4&\\frac{1}{4}\\end{pmatrix}}$.",
     "(\\begin{pmatrix}-\\frac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix})", "math", "correct"),  # parenthesised matrix, trailing \\
    ("more_kinds", "So $\\boxed{a_{37} = 19, \\quad a_3 = 2}$.", "a_3 = 2, a_{37} = 19", "math", "correct"),  # assignments in any order
    ("more_kinds", "So $\\boxed{(7,11),\\ (11,7)}$.", "(11,7) or (7,11)", "math", "correct"),  # a gold listing alternatives with "or"
    ("more_kinds", "So $\\boxed{\\{x \\mid 0 < x < 1\\}}$.", "(0, 1)", "math", "correct"),  # set-builder notation
    ("more_kinds", "So $\\boxed{\\lbrace 1, 2 \\rbrace}$.", "2, 1", "math", "correct"),  # \lbrace \rbrace
    ("more_kinds", "So $\\boxed{40}$.", "m\\angle ABC = 40^\\circ", "math", "correct"),  # an angle's name
    ("more_kinds", "So $\\boxed{\\frac12}$.", "\\sin \\theta = \\frac{1}{2}", "math", "correct"),  # a function of a name
    ("more_kinds", "So $\\boxed{5}$.", "a+b = 5", "math", "wrong"),  # a sum is not a name
    ("more_kinds", "So $\\boxed{x < -1 \\text{ or } x > 1}$.", "(-\\infty,-1)\\cup(1,\\infty)", "math", "correct"),  # or between one variable's inequalities
    ("more_kinds", "So $\\boxed{x < -1 \\text{ or } x > 1}$.", "(-\\infty,-1)\\cup(2,\\infty)", "math", "wrong"),  # one end off
    ("more_kinds", "The answer is $x < -1$ or $x > 1$.", "(-\\infty,-1)\\cup(1,\\infty)", "math", "correct"),  # the same across spans
    ("more_kinds", "\\boxed{x=2} \\quad \\text{or} \\quad \\boxed{x=5}", "2, 5", "math", "correct"),  # boxed solutions of one variable
    ("more_kinds", "\\boxed{x=2} \\quad \\text{or} \\quad \\boxed{x=5}", "2", "math", "wrong"),  # two solutions are not one
    ("more_kinds", "So $\\boxed{+033}$.", "33", "math", "correct"),  # sign and leading zero
    ("more_kinds", "So $\\boxed{\\frac{1}{2}, \\frac{-1 + \\sqrt{13}}{4}, \\frac{-1 - \\sqrt{13}}{4}}$.",
     "x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}", "math", "correct"),  # \pm inside a fraction, in a list
    ("more_kinds", "So $\\boxed{\\frac{1}{2}, \\frac{-1 + \\sqrt{13}}{4}}$.",
     "x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}", "math", "wrong"),  # one of the \pm values missing
    ("more_kinds", "The final answer is that there are 5 ways.", "5", "math", "correct"),  # a number and a plain word
    ("more_kinds", "The final answer is that there are 5 ways.", "6", "math", "wrong"),  # hard negative
    ("more_kinds", "So $\\boxed{5 \\text{ squared}}$.", "5", "math", "wrong"),  # a word that changes the value
    ("more_kinds", "The answer is $5$ million.", "5", "math", "wrong"),  # a scale word after the math counts
    ("more_kinds", "The answer is $5$ million.", "5000000", "gsm8k", "correct"),  # and is read on GSM8K
    ("more_kinds", "The answer is $12$ and $13$ respectively.", "12, 13", "math", "correct"),  # a word after a list
    ("more_kinds", "So $\\boxed{19, 46, \\text{ and } 82}$.", "19, 46, and 82", "math", "correct"),  # a list ending in "and"
    ("more_kinds", "The answer is 4 4/9.", "40/9", "gsm8k", "correct"),  # plain mixed number
    ("more_kinds", "The answer is 11 6/6.", "11", "gsm8k", "no_answer"),  # not a mixed number, nor 11 * 6/6
    # garbage around numbers and candidates offered side by side are never credited
    ("garbage", "The answer is 3 4", "12", "gsm8k", "no_answer"),  # two numbers are not their product
    ("garbage", "So $\\boxed{3 4}$.", "12", "math", "wrong"),  # the same in a box
    ("garbage", "The answer is $12$$13$", "12", "math", "wrong"),  # adjacent spans are a list
    ("garbage", "Final answer: $12$ / $13$", "12", "math", "no_answer"),  # a slash between candidates
    ("garbage", "\\boxed{12} \\vee \\boxed{13}", "13", "math", "no_answer"),  # logical or between boxes
    ("garbage", "The answer is 12; 13", "12", "gsm8k", "no_answer"),  # a bare second candidate after the answer
    ("garbage", "The answer is 12 (13)", "13", "gsm8k", "no_answer"),  # a bare number in parentheses
    ("garbage", "\\boxed{12}\\text{ or }13", "13", "math", "no_answer"),  # or after the box
    ("garbage", "The answer is \\boxed{12}, not \\boxed{13}", "13", "math", "no_answer"),  # contrast between boxes
    ("garbage", "\\boxed{\\text{AZYUK2A}}", "2", "math", "wrong"),  # a label, not 2
]


def test_external_cases() -> None:
    # one batch: the symbolic cases share the worker pool
    vs = check_batch([c[1] for c in CASES], [c[2] for c in CASES], datasets=[c[3] for c in CASES])
    bad = [(c[0], c[1], c[2], v.status, v.extracted, v.error) for c, v in zip(CASES, vs) if v.status != c[4]]
    assert not bad, "\n".join(map(str, bad))


@pytest.mark.parametrize("completion", [
    "The answer is $12$ or $13$.",  # or between math spans
    "The answer is \\(12\\) or \\(13\\).",  # or between \( \) spans
    "The answer is $$12$$ or $$13$$",  # or between display spans
    "Final answer: $12$ (or possibly $15$)",  # parenthetical alternative
    "\\boxed{12} \\text{ or } \\boxed{13}",  # or between boxes
    "The answer is $12$, maybe $13$.",  # maybe
])
def test_hedges_never_pay_either_candidate(completion: str) -> None:
    for gold in ("12", "13", "15"):
        for dataset in ("math", "gsm8k"):
            v = check_batch([completion], [gold], datasets=dataset)[0]
            assert v.score == 0.0 and v.status == "no_answer", (completion, gold, dataset, v)
