"""Hand-written (context, explanation) cases for `harness check-simulator`.

Each case is a text whose last token is the one judged, an explanation that matches that token in that
context, and one that does not. Half are lexical (the explanation names the token or its spelling), half
semantic (the explanation names a category, a role or a sense the token has only in this context). A
simulator that reads explanations scores every matching explanation above the non-matching one of the same
text; one that ignores them cannot, since both share the text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    kind: str          # "lexical" | "semantic"
    text: str          # the context before the judged token
    last: str          # the judged token's text, leading space included
    match: str         # an explanation the judged token fits
    other: str         # an explanation it does not fit


CASES: tuple[Case, ...] = (
    Case("lexical", "We walked along the bank of the", " river",
         'the word "river"', 'the word "because"'),
    Case("lexical", "She opened the window and said hello to her", " cat",
         'the token "cat" or "cats"', 'the token "seven" or "eight"'),
    Case("lexical", "def compute(x):\n    return", " x",
         'the variable name "x" in code', 'the word "however" at the start of a clause'),
    Case("lexical", "The meeting was moved to next", " Tuesday",
         'the word "Tuesday"', 'the word "the"'),
    Case("lexical", "I could not believe it, but it was", " true",
         'the words "true" or "false"', 'the words "London" or "Paris"'),
    Case("lexical", "They bought apples, pears and", " bananas",
         'the word "bananas"', 'the word "however"'),
    Case("lexical", "He said it twice:", " hello",
         'the greeting "hello"', 'the number "42"'),
    Case("lexical", "The total came to 42", ".",
         'a full stop "." ending a sentence', 'the word "dog"'),
    Case("semantic", "After the storm the boats returned to the", " harbor",
         "places where ships or boats are kept, such as ports and harbors", "numbers and dates"),
    Case("semantic", "The price rose from ten dollars to", " twenty",
         "number words such as one, ten or twenty", "animals and pets"),
    Case("semantic", "For breakfast she ate toast with", " butter",
         "foods and ingredients", "verbs of motion such as run, walk or jump"),
    Case("semantic", "The children started to", " run",
         "verbs of motion such as run, walk or jump", "colours such as red, blue or green"),
    Case("semantic", "Her new car was painted bright", " red",
         "colours such as red, blue or green", "names of countries"),
    Case("semantic", "Last summer we flew to", " France",
         "names of countries", "foods and ingredients"),
    Case("semantic", "The doctor told the patient to take the", " medicine",
         "words about health, illness and medical treatment", "words about sports and games"),
    Case("semantic", "import numpy as np\nimport", " pandas",
         "names of Python libraries in import statements", "words about the weather"),
)
