"""The built-in `demo` competition: math-problem-like text, generated deterministically.

Writes train.csv (Question,label — no id, like kasut), test.csv (id,Question) and
sample_submission.csv (id,label) into the folder it is given; `make download` calls it for
COMP=demo. The data is made to give the checks something to find (LaTeX, byte-string literals,
URLs, HTML, emails, exact and near duplicates, non-English rows) and to keep the task honest:
templates share phrasing across classes and ~6% of train labels are flipped, so TF-IDF stays
clearly below 1.0.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from medalist.core.io import write_csv

N_TRAIN, N_TEST, SEED = 1500, 500, 20261124
# class index → share of rows: imbalanced like the real competition
SHARES = [0.30, 0.25, 0.17, 0.13, 0.10, 0.05]
LABEL_NOISE = 0.06

V = "xyzabnmkt"
OPENERS = ["Find", "Compute", "Determine", "Evaluate", "Show that", "Calculate", "What is"]

TEMPLATES: list[list[str]] = [
    [  # 0 Algebra
        "{o} all real $x$ such that ${a}x^2 + {b}x - {c} = 0$.",
        "{o} the value of ${v}$ if ${a}{v} + {b} = {c}{v} - {d}$.",
        "Solve the inequality $|{v} - {a}| < {b}$ and give the interval.",
        "If $f({v}) = {a}{v}^2 - {b}$, {ol} $f({c})$ and $f(f(1))$.",
        "{o} the sum of the roots of the polynomial $p({v}) = {v}^3 - {a}{v}^2 + {b}{v} - {c}$.",
        "Simplify $\\frac{{{v}^2 - {a}}}{{{v} + {b}}}$ and state where it is defined.",
        "The sequence $a_n = {a}n + {b}$ is arithmetic. {o} $a_{{{c}}}$.",
        "{o} the function value when the expression ${a}{v} + {b}$ equals {c}.",
    ],
    [  # 1 Geometry
        "A triangle has sides {a}, {b} and {c}. {o} its area.",
        "{o} the area of a circle with radius {a} cm.",
        "In triangle $ABC$, $\\angle A = {a}^\\circ$ and $\\angle B = {b}^\\circ$. {o} $\\angle C$.",
        "A rectangle has perimeter {c} and one side {a}. {o} its diagonal.",
        "{o} $\\sin\\theta$ if $\\cos\\theta = \\frac{{{a}}}{{{c}}}$ and $\\theta$ is acute.",
        "The points $({a},{b})$ and $({c},{d})$ lie on a circle centred at the origin. {o} the radius.",
        "A regular polygon has {a} sides. {o} the measure of each interior angle.",
        "{o} the value of the angle between two lines with slopes {a} and {b}.",
    ],
    [  # 2 Calculus
        "{o} $\\lim_{{{v} \\to 0}} \\frac{{\\sin {a}{v}}}{{{v}}}$.",
        "{o} the derivative of $f({v}) = {a}{v}^3 - {b}{v} + {c}$.",
        "Evaluate $\\int_0^{{{a}}} ({b}{v} + {c})\\, d{v}$.",
        "{o} where $g({v}) = {v}^3 - {a}{v}$ is increasing.",
        "Does the series $\\sum_{{n=1}}^\\infty \\frac{{{a}}}{{n^{b}}}$ converge?",
        "{o} the maximum of $h({v}) = -{a}{v}^2 + {b}{v}$ on $[0, {c}]$.",
        "{o} the value of the rate of change of ${a}{v}^2$ at ${v} = {b}$.",
    ],
    [  # 3 Probability and Statistics
        "Two fair dice are rolled. {o} the probability that the sum is {a}.",
        "A bag holds {a} red and {b} blue balls. {o} the probability of drawing two red balls.",
        "{o} the mean and variance of the data ${a}, {b}, {c}, {d}$.",
        "A coin is tossed {a} times. {o} the expected number of heads.",
        "{o} the probability that a card drawn from a standard deck is a heart or a {a}.",
        "If $X$ is binomial with $n = {a}$ and $p = 0.{b}$, {ol} $P(X = {c})$.",
        "{o} the value of the median of ${a}, {b}, {c}$ and {d}.",
    ],
    [  # 4 Number Theory
        "{o} the remainder when ${a}^{{{b}}}$ is divided by {c}.",
        "{o} $\\gcd({a}, {b})$ and $\\operatorname{{lcm}}({a}, {b})$.",
        "How many positive divisors does {a}{b} have?",
        "Show that $n^2 + n$ is even for every integer $n$.",
        "{o} all primes $p$ with $p \\equiv {a} \\pmod{{{c}}}$ below {d}0.",
        "{o} the last two digits of ${a}^{{{b}{c}}}$.",
        "{o} the value of the sum of the digits of {a}{b}{c}.",
    ],
    [  # 5 Linear Algebra
        "{o} the determinant of $\\begin{{pmatrix}} {a} & {b} \\\\ {c} & {d} \\end{{pmatrix}}$.",
        "{o} the eigenvalues of the matrix $A = \\begin{{bmatrix}} {a} & 0 \\\\ {b} & {c} \\end{{bmatrix}}$.",
        "Are the vectors $({a}, {b})$ and $({c}, {d})$ linearly independent?",
        "{o} the rank of a $3 \\times 3$ matrix whose rows are $({a},{b},{c})$, $(1,1,1)$ and $({d},0,1)$.",
        "{o} the value of the dot product of $({a},{b})$ and $({c},{d})$.",
    ],
]

NON_ENGLISH = [
    "Resuelve la ecuación ${a}x + {b} = {c}$ para $x$.",
    "Calculez l'aire d'un cercle de rayon {a}.",
    "Berechnen Sie die Ableitung von $f(x) = x^{a}$.",
    "Найдите остаток от деления {a}{b} на {c}.",
]
NON_ENGLISH_LABEL = [0, 1, 2, 4]


def _fill(rng: random.Random, template: str) -> str:
    o = rng.choice(OPENERS)
    vals = {k: rng.randint(2, 19) for k in "abcd"}
    return template.format(o=o, ol=o.lower(), v=rng.choice(V), **vals)


def _decorate(rng: random.Random, text: str, label: int) -> str:
    """Add the noise real Kaggle text has: byte literals, HTML, links, emails."""
    r = rng.random()
    if r < 0.05:
        return "b'" + text.replace("'", "\\'") + "\\n'"
    if r < 0.08:
        return f"<p>{text}</p><br/>"
    if r < 0.10:
        return f"{text} See https://example.org/problems/{rng.randint(100, 999)} for hints."
    if r < 0.11:
        return f"{text} Send answers to student{rng.randint(1, 99)}@example.com."
    if r < 0.12 and label in (2, 3):
        return f"{text}\n```python\nprint(sum(range({rng.randint(3, 9)})))\n```"
    return text


def _rows(rng: random.Random, n: int) -> list[tuple[str, int]]:
    counts = [round(s * n) for s in SHARES]
    counts[0] += n - sum(counts)
    rows = []
    for label, c in enumerate(counts):
        for _ in range(c):
            if rng.random() < 0.01:
                i = rng.randrange(len(NON_ENGLISH))
                rows.append((_fill(rng, NON_ENGLISH[i]), NON_ENGLISH_LABEL[i]))
                continue
            rows.append((_decorate(rng, _fill(rng, rng.choice(TEMPLATES[label])), label), label))
    rng.shuffle(rows)
    return rows


def write_demo(out_dir: Path) -> None:
    rng = random.Random(SEED)
    train = _rows(rng, N_TRAIN)
    n_dup = 30
    for i in range(n_dup):  # exact duplicates, and near duplicates differing in spacing/case
        text, label = train[i]
        train.append((text if i % 2 else text.upper().replace(" ", "  "), label))
    noisy = []
    for text, label in train:
        if rng.random() < LABEL_NOISE:
            label = rng.choice([k for k in range(len(SHARES)) if k != label])
        noisy.append((text, label))
    test_rows = _rows(rng, N_TEST)
    test_texts = [t for t, _ in test_rows]
    for i in range(10):  # train rows that reappear in test, as Kaggle data often has
        test_texts[i] = noisy[100 + i][0]
    out_dir = Path(out_dir)
    write_csv(out_dir / "train.csv", pd.DataFrame({"Question": [t for t, _ in noisy], "label": [l for _, l in noisy]}))
    ids = [str(1000 + i) for i in range(len(test_texts))]
    write_csv(out_dir / "test.csv", pd.DataFrame({"id": ids, "Question": test_texts}))
    write_csv(out_dir / "sample_submission.csv", pd.DataFrame({"id": ids, "label": 0}))
