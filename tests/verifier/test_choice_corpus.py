"""``multiple_choice`` on a hand-labelled corpus of answers (issue #15): the letter each answer names, or none.

Each entry is ``(answer text, options or None, the letter it names or None)``. The rules the labels follow are
those in ``rollgate.verifier._choice``'s docstring; the ambiguous entries are labelled by those rules (several
letters named on the same footing: none). The corpus must agree at least 97%; a tolerated miss is listed in
``TOLERATED`` with its reason (none at present).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from rollgate.verifier._choice import multiple_choice
from rollgate.verifier.errors import InvalidTask

from .verifier_helpers import answer_response

CAPITALS = ["London", "Paris", "Berlin", "Madrid"]  # A B C D
NESTED = ["Paris", "Paris, Texas", "Texas", "Austin"]  # options that are substrings of each other
NUMBERS = ["3", "13", "30", "33"]

Entry = tuple[str, "list[str] | None", "str | None"]

CORPUS: list[Entry] = [
    # 1. The whole answer, or its last line, is a lone letter.
    ("C", None, "C"),
    ("c", None, "C"),
    ("(C)", None, "C"),
    ("[C]", None, "C"),
    ("C)", None, "C"),
    ("C.", None, "C"),
    ("**C**", None, "C"),
    ("$C$", None, "C"),
    ("\\text{C}", None, "C"),
    ("$\\text{C}$", None, "C"),
    ("Option C", None, "C"),
    ("option d", None, "D"),
    ("(d)", None, "D"),
    ("a", None, "A"),  # the whole answer: no article can be meant
    ("Answer:\n\n(C)", None, "C"),
    ("Reasoning about each option goes here.\n\nB", None, "B"),
    ("Let me look at each option.\n**D**", None, "D"),
    ("E", CAPITALS, None),  # out of range for four options
    # 2. \boxed{...}
    ("\\boxed{B}", None, "B"),
    ("The final answer is $\\boxed{C}$", None, "C"),
    ("Thus \\boxed{\\text{B}}.", None, "B"),
    ("First I thought \\boxed{A}, but re-checking: \\boxed{D}", None, "D"),
    ("\\boxed{C. Paris}", None, "C"),
    ("$\\boxed{(A)}$ is my answer", None, "A"),
    # 3. Answer statements (simple-evals' "Answer: X", lm-eval's "The answer is (X)", lighteval's variants).
    ("answer: c", None, "C"),
    ("Answer: (b)", None, "B"),
    ("ANSWER: B", None, "B"),
    ("ans: d", None, "D"),
    ("answer = d", None, "D"),
    ("The answer is C.", None, "C"),
    ("The answer is: D", None, "D"),
    ("The correct answer is (C) Paris", None, "C"),
    ("The correct answer is D) Madrid", CAPITALS, "D"),
    ("Answer: C. Paris", None, "C"),
    ("**Answer:** C", None, "C"),
    ("**Final Answer**: B", None, "B"),
    ("My answer: D", None, "D"),
    ("My final answer is B.", None, "B"),
    ("Correct option: B", None, "B"),
    ("The correct choice is A.", None, "A"),
    ("The best choice would be D.", None, "D"),
    ("The answer is therefore (B).", None, "B"),
    ("The answer would be E", None, "E"),
    ("The answer to this question is D.", None, "D"),
    ("The answer is option C.", None, "C"),
    ("The answer is **C**", None, "C"),
    ("The answer is [B].", None, "B"),
    ("Answer: $\\text{(B)}$", None, "B"),
    ('{"answer": "C"}', None, "C"),
    ("The answer is A because Paris is the capital.", None, "A"),
    ("the answer is b because the others are wrong", None, "B"),
    ("Final answer: the answer is a.", None, "A"),
    ("answer: i", None, "I"),
    ("So the answer must be (J).", None, "J"),
    ("I think the answer is B, but I'm not certain.", None, "B"),
    ("The answer is C, because A is wrong", None, "C"),
    ("The answer is C. Option A is tempting but (B) and (D) fail.", None, "C"),
    ("Answer: A\n\nExplanation: B is wrong because it is too big, and C is too small.", None, "A"),
    ("Answer: B\nReasoning: A is out; I'd choose B over C anyway.", None, "B"),
    ("Let me think. A is wrong because... The answer is C.", None, "C"),
    ("Answer: A. Wait, let me re-check. Actually the answer is B.", None, "B"),  # the correction wins
    ("I'd go with C, but the answer is D.", None, "D"),
    ("The answer is E.", CAPITALS, None),  # out of range
    # 4. Choices and verdicts.
    ("B is correct.", None, "B"),
    ("I'd go with C.", None, "C"),
    ("Between A and B, I choose B.", None, "B"),
    ("I pick D.", None, "D"),
    ("I choose c", None, "C"),
    ("I'll select option A.", None, "A"),
    ("Let's go with B.", None, "B"),
    ("I'm going with D", None, "D"),
    ("I'd say C.", None, "C"),
    ("(B) is the correct answer.", None, "B"),
    ("Option C is the best answer here.", None, "C"),
    ("Option B is correct because Paris is the capital.", None, "B"),
    ("A is wrong, B is wrong, so D is correct.", None, "D"),
    ("I wouldn't choose A; B is the right answer.", None, "B"),
    # 5. A letter opening the answer.
    ("A. Paris", None, "A"),
    ("A. Paris", CAPITALS, "A"),  # the letter beats the text (Paris is B)
    ("C) Berlin is the capital of Germany", None, "C"),
    ("(D) Madrid", None, "D"),
    ("B: Paris", None, "B"),
    ("D - Madrid", None, "D"),
    ("**B** Paris", None, "B"),
    ("C\n\nBecause the others are wrong.", None, "C"),
    # 6. Concluding letters.
    ("Paris is the capital of France, so B.", None, "B"),
    ("Therefore, (C).", None, "C"),
    ("It's D.", None, "D"),
    ("Looking at the evidence, it is A.", None, "A"),
    ("Hmm, not A. Not B either. It's C.", None, "C"),
    # 7. The option's text.
    ("Paris", CAPITALS, "B"),
    ("paris", CAPITALS, "B"),
    (" Paris.\n", CAPITALS, "B"),
    ("**Berlin**", CAPITALS, "C"),
    ("\\boxed{\\text{Madrid}}", CAPITALS, "D"),
    ("The answer is Paris.", CAPITALS, "B"),
    ("The answer is Paris, because it is the capital.", CAPITALS, "B"),
    ("The capital of France is Paris.", CAPITALS, "B"),
    ("I'd go with Madrid.", CAPITALS, "D"),
    ("It's London, not Paris.", CAPITALS, "A"),
    ("Paris is the correct answer.", CAPITALS, "B"),
    ("Madrid. It is the capital of Spain.", CAPITALS, "D"),
    ("Answer: Paris (B)", CAPITALS, "B"),
    ("The answer is London. It is not Paris.", CAPITALS, "A"),
    ("I would not pick Paris; London.", CAPITALS, "A"),
    ("A) London B) Paris C) Berlin\nThe answer is Berlin", CAPITALS, "C"),  # options echoed, then answered
    ("Rome", CAPITALS, None),
    ("The capital is Lyon.", CAPITALS, None),
    ("Paris, Texas", NESTED, "B"),
    ("Texas", NESTED, "C"),
    ("The answer is Paris, Texas.", NESTED, "B"),
    ("The answer is Paris.", NESTED, "A"),
    ("I believe it's Texas", NESTED, "C"),
    ("Paris, Texas is correct.", NESTED, "B"),
    ("Not Paris, Texas. Just Texas", NESTED, "C"),
    ("13", NUMBERS, "B"),
    ("The answer is 3.", NUMBERS, "A"),
    ("The answer is 33", NUMBERS, "D"),
    # 8. Marked letters, when they name one letter.
    ("Looking at the choices, only (C) fits the data.", None, "C"),
    ("Hmm, maybe option B fits best", None, "B"),
    # Nothing, or several letters on the same footing: no letter.
    ("", None, None),
    ("the answer is a bit unclear", None, None),
    ("a bit unclear", None, None),
    ("a lot of people think B", None, None),
    ("I don't know.", None, None),
    ("None of the above.", None, None),
    ("i.e. the first one", None, None),
    ("I'm not sure; maybe it is a trick question.", None, None),
    ("Choose the best option from A, B, C and D.", None, None),
    ("Answer: A or B", None, None),
    ("Answer: A and C.", None, None),
    ("It could be A/B.", None, None),
    ("Both A and C are correct.", None, None),
    ("I think (B), though (A) is tempting.", None, None),
    ("The wrong answer is A.", None, None),
    ("A is not correct.", None, None),
    ("The answer is not A.", None, None),
]

# Misses the corpus tolerates: {index in CORPUS: reason}. Empty: every entry is scored as labelled.
TOLERATED: dict[int, str] = {}


def _task(expected: str, options: list[str] | None) -> dict[str, Any]:
    task: dict[str, Any] = {"expected_answer": expected}
    if options is not None:
        task["options"] = options
    return task


def _extracted(text: str, options: list[str] | None) -> str:
    return str(multiple_choice(_task("A", options), answer_response(text))["extracted_answer"])


def test_corpus_is_large_and_labelled() -> None:
    assert len(CORPUS) >= 100
    assert sum(1 for _, options, _ in CORPUS if options) >= 20
    assert sum(1 for _, _, letter in CORPUS if letter is None) >= 15


def test_corpus_agreement() -> None:
    misses = {i: (text, letter, got) for i, (text, options, letter) in enumerate(CORPUS)
              if (got := _extracted(text, options)) != (letter or "")}
    agreement = 1 - len(misses) / len(CORPUS)
    untolerated = {i: m for i, m in misses.items() if i not in TOLERATED}
    assert agreement >= 0.97, f"agreement {agreement:.1%}; misses (text, labelled, extracted): {misses}"
    assert not untolerated, f"misses not in TOLERATED (text, labelled, extracted): {untolerated}"


@pytest.mark.parametrize(("text", "options", "letter"), [e for e in CORPUS if e[2] is not None])
def test_rewards_follow_the_letter(text: str, options: list[str] | None, letter: str) -> None:
    right = multiple_choice(_task(letter, options), answer_response(text))
    assert (right["reward"], right["accuracy"], right["extracted_answer"]) == (1.0, 1.0, letter)
    other = "B" if letter == "A" else "A"
    assert multiple_choice(_task(other, options), answer_response(text))["reward"] == 0.0
    if options:  # the expected answer given as the option's text
        assert multiple_choice(_task(options[ord(letter) - ord("A")], options), answer_response(text))["reward"] == 1.0


def test_no_letter_scores_zero() -> None:
    for text, options, letter in CORPUS:
        if letter is None:
            result = multiple_choice(_task("A", options), answer_response(text))
            assert (result["reward"], result["extracted_answer"]) == (0.0, ""), text


def test_output_fields_and_invalid_tasks() -> None:
    result = multiple_choice({"expected_answer": "c"}, answer_response("<think>maybe A</think>Answer: C"))
    assert result == {"reward": 1.0, "accuracy": 1.0, "extracted_answer": "C", "response_text": "Answer: C"}
    for task in ({"expected_answer": "Z"}, {"expected_answer": "E", "options": CAPITALS},
                 {"expected_answer": "Rome", "options": CAPITALS}, {}):
        with pytest.raises(InvalidTask):
            multiple_choice(task, answer_response("A"))
    # Option texts of one character are texts, not letters, when they are not valid letters.
    assert multiple_choice({"expected_answer": "3", "options": NUMBERS}, answer_response("3"))["reward"] == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "answer is " * 5000,
        "(" * 50000,
        "A" * 50000,
        " " * 50000 + "x",
        "I'd go with " * 4000,
        "\\boxed{" * 6000,
        "**" * 25000,
        "B is " * 10000,
        "not " * 12000 + "Paris",
        "so " * 15000 + "!",
    ],
)
def test_hostile_answers_are_fast(text: str) -> None:
    start = time.perf_counter()
    multiple_choice({"expected_answer": "B", "options": CAPITALS}, answer_response(text))
    multiple_choice({"expected_answer": "B"}, answer_response(text))
    assert time.perf_counter() - start < 1.0
