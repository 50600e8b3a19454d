"""The ``multiple_choice`` built-in: the option the answer chose, compared with ``expected_answer``.

``expected_answer`` is a letter, or an option's text when the task lists ``options``.
"""

from __future__ import annotations

import re
from typing import Any

from rollgate.verifier._builtins import expected_values, scored
from rollgate.verifier._text import final_answer, normalize
from rollgate.verifier.errors import InvalidTask

__all__ = ["multiple_choice"]

_LETTERS = "ABCDEFGHIJ"
# Most explicit first: a stated answer wins over a letter that merely appears.
# Keywords in any case, the letter itself upper case ("the answer is a bit unclear" names no option).
_MC_STATED = re.compile(
    r"(?i:final\s+answer|answer|correct\s+(?:option|choice)|option|choice)\s*(?i:is)?\s*[:\-]?\s*"
    r"[\(\[\*]*\s*([A-J])(?![\w'])"
)
_MC_ALONE = re.compile(r"^[\s\(\[\*]*([A-J])[\s\)\]\*\.:]*$", re.IGNORECASE)
_MC_BRACKETED = re.compile(r"[\(\[]([A-J])[\)\]]|\*\*([A-J])\*\*")


def _choice_letter(text: str, valid: str) -> str | None:
    stated = [m.group(1).upper() for m in _MC_STATED.finditer(text)]
    stated = [s for s in stated if s in valid]
    if stated:
        return stated[-1]
    alone = _MC_ALONE.match(text)
    if alone and alone.group(1).upper() in valid:
        return alone.group(1).upper()
    marked = [(m.group(1) or m.group(2)).upper() for m in _MC_BRACKETED.finditer(text)]
    marked = [s for s in marked if s in valid]
    return marked[-1] if marked else None


def multiple_choice(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    expected = expected_values(task, "multiple_choice")[0].strip()
    options = task.get("options")
    valid = _LETTERS
    if isinstance(options, list) and options:
        valid = _LETTERS[: len(options)]
        texts = [normalize(str(o)) for o in options]
        if len(expected) != 1 and normalize(expected) in texts:  # the answer given as the option's text
            expected = valid[texts.index(normalize(expected))]
    if len(expected) != 1 or expected.upper() not in valid:
        raise InvalidTask(f"multiple_choice: 'expected_answer' must be one of the letters {valid}, got {expected!r}")
    answer = final_answer(response)
    letter = _choice_letter(answer, valid)
    return scored(1.0 if letter == expected.upper() else 0.0, letter or "", response_text=answer[-200:])
