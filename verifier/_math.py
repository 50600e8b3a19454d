"""The ``math`` built-in (it imports math-verify and sympy, so it loads lazily).

``math_verify(task, response)`` compares the model's final answer with ``task["expected_answer"]`` for
mathematical equivalence using math-verify (``parse`` + ``verify``, the way its authors use them).

Gold (``expected_answer``: a string, an int or a finite float; anything else raises ``InvalidTask``):

* parsed as LaTeX, the way math-verify's own task definitions parse gold answers (``math_verify/tasks.py``:
  ``gold_extraction_target=(LatexExtractionConfig(...),)``, with ``ExprExtractionConfig`` for plain numbers).
  A bare gold such as ``2\\pi`` or ``[1, 3)`` has no LaTeX environment for the LaTeX extractor to find, so it
  is wrapped as ``$…$`` first; a gold that already has one (``$…$``, ``\\boxed{}``, ``\\(…\\)``, ``\\[…\\]``) is
  parsed as it stands. Only if that yields nothing is the gold read as plain text.
* so the whole gold is kept: ``2\\pi``, ``[1, 3)``, ``(-\\infty, 2]``, ``\\{1, 2\\}``, ``2, 3`` (a set),
  ``(3, -2)`` (a tuple; ``(1, 2)`` is math-verify's open interval, which also equals the point ``(1, 2)``),
  ``y=2x+1``, ``\\begin{pmatrix}…\\end{pmatrix}``, ``50\\%``, ``1,000`` (= 1000), ``5 cm`` (= 5; a number
  followed by plain words, ``12 apples``, is that number). A float gold is written out in full (``1e-05`` ->
  ``0.00001``), as is a string in Python's exponent notation (``1e3`` -> ``1000``).
* an empty gold, or one that parses to nothing, raises ``InvalidTask``.

Answer (``rollgate.verifier._text.final_answer``: the last assistant message, ``<think>`` and reasoning items
set aside), the first of these that is present:

1. the content of the *last* ``\\boxed{…}`` (or ``\\fbox{…}``), read as in 2 but always as LaTeX unless it is
   a number with words: several boxes -> the last wins;
2. else the rest of the last line that says ``answer`` (``Answer: …``, ``The final answer is …``, or the next
   line when that one ends at the colon), with markdown ``**``, ``$``/``\\(…\\)`` delimiters and a trailing
   full stop removed. A number followed by plain words (``12 apples``) is that number; prose (two plain words
   in a row, e.g. ``It is 12``) goes to math-verify's plain-text extractor; anything else is parsed as LaTeX
   (``$…$``-wrapped), so ``Answer: 3\\sqrt{2}`` is 3√2 and ``The answer is [1, 3).`` an interval, never 3;
3. else a one-line answer without ``$`` is read the same way as in 2, and longer text is handed to math-verify's
   default extraction (its own ``final answer is``/``answer:`` anchors, the last LaTeX environment, else the
   last number). Answer-line text that still holds a ``$`` also goes to that default extraction.

Comparison is ``math_verify.verify(gold, answer)`` with its defaults (``float_rounding=6``,
``numeric_precision=15``, ``strict=True``), so: ``\\frac{1}{2}`` = ``0.5`` = ``1/2``; ``1/3`` = ``0.333333`` but
not ``0.33``; ``2\\pi`` = ``6.283185307`` but not ``2``; ``x^2+2x+1`` = ``(x+1)^2``; sets ignore order, tuples
don't (a tuple gold compares in written order against a comma list or a set, e.g. ``(1, 2, 3)`` =
``\\{1,2,3\\}``); intervals compare their ends and open/closed sides (``[1,3)`` != ``[1,3]``), and a relation gold
``x \\le 2`` equals the interval ``(-\\infty, 2]``; an assignment gold ``x=3``/``y=2x+1`` also accepts its right
side (``3``/``2x+1``) and an answer ``x=3`` is accepted for gold ``3``, but ``y=3`` is not ``x=3``; percentages:
math-verify reads ``50\\%`` as ``50·(1/100)`` and accepts both ``0.5`` and ``50`` for it (and ``50\\%`` for gold
``0.5`` or ``50``); units in ``\\text{}`` or known unit names are dropped (``5\\text{ cm}`` = ``5``).

Result fields: ``reward`` and ``accuracy`` (1.0 or 0.0, equal); ``extracted_answer``: the answer as written
(box content or answer-line text, without ``**``/``$``), or math-verify's reading of it, ``""`` if none;
``reason``: ``None`` on 1.0, else ``"no_answer"`` (empty message, or nothing math-verify reads),
``"mismatch"`` (read but not equivalent) or ``"timeout"`` (a math-verify parse or comparison timed out).

Timeouts: math-verify's own (``parsing_timeout`` 5 s per parse, ``timeout_seconds`` 5 s per comparison) use
``SIGALRM``, which only works in a process's main thread (e.g. a worker process); called from any other
thread, math-verify would raise ``ValueError``, so there they are off and the caller bounds the run time.
math-verify cancels any ``SIGALRM`` timer its caller had pending when its own ends; ``math_verify`` re-arms
such a timer with the time it had left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify  # type: ignore[import-untyped]
from math_verify.errors import TimeoutException  # type: ignore[import-untyped]

from rollgate.verifier._text import final_answer
from rollgate.verifier.errors import InvalidTask

__all__ = ["math_verify"]

# Off the main thread math-verify warns once that its timeouts are disabled; the reason is documented above.
logging.getLogger("math_verify").setLevel(logging.ERROR)

PARSE_TIMEOUT_S = 5  # math-verify's defaults
VERIFY_TIMEOUT_S = 5

_LATEX_AND_EXPR = (LatexExtractionConfig(), ExprExtractionConfig())
_GOLD_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_DOLLAR = re.compile(r"(?<!\\)\$")  # a math delimiter, not an escaped \$ sign
_LATEX_ENV = re.compile(r"(?<!\\)\$|\\boxed|\\fbox|\\\(|\\\[")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_WORD = re.compile(r"(?i)\banswer\b")
_ANSWER_LEAD = re.compile(r"(?i)^(?:\s|\*|_|#|:|：|=|\bis\b|\bwill be\b)*")
# Two plain words in a row (not \\commands): prose, read with the plain-text extractor rather than as LaTeX.
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_NUMBER_WITH_WORDS = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z][A-Za-z .]*$")
_EXPONENT_NUMBER = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")
_OPENERS = "([{"
_CLOSERS = ")]}"


def _timeouts() -> tuple[int | None, int | None]:
    """math-verify's timeouts where ``SIGALRM`` works (a main thread), else none."""
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


@contextlib.contextmanager
def _keep_pending_alarm() -> Iterator[None]:
    """Re-arm a caller's pending ``SIGALRM`` timer, which math-verify's ``alarm(0)`` would otherwise cancel."""
    delay, interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    try:
        yield
    finally:
        if delay > 0 and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            left = delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)


def _parse(text: str, config: tuple[Any, ...], timeout_s: int | None) -> list[Any]:
    """``math_verify.parse``; a timeout raises ``TimeoutException``, any other failure reads as nothing."""
    try:
        return list(parse(text, extraction_config=config, parsing_timeout=timeout_s, raise_on_error=True))
    except TimeoutException:
        raise
    except Exception:
        return []


def _gold_text(expected: str | int | float) -> str:
    if isinstance(expected, int):
        return str(expected)
    if isinstance(expected, float):
        if not math.isfinite(expected):
            raise InvalidTask(f"math: 'expected_answer' {expected!r} is not a finite number")
        return format(Decimal(repr(expected)), "f")
    text = expected.strip()
    if _EXPONENT_NUMBER.match(text):
        return format(Decimal(text), "f")
    return text


@lru_cache(maxsize=1024)
def _parse_gold(gold: str, timeout_s: int | None) -> tuple[Any, ...]:
    words = _NUMBER_WITH_WORDS.match(gold)
    if words:
        gold = words.group(1)
    wrapped = gold if _LATEX_ENV.search(gold) else f"${gold}$"
    parsed = _parse(wrapped, _GOLD_CONFIG, timeout_s) or _parse(gold, _LATEX_AND_EXPR, timeout_s)
    return tuple(parsed)


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}``/``\\fbox{…}`` with balanced braces, or ``None``."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _clean(text: str) -> str:
    """An answer without markdown emphasis, math delimiters, or a trailing full stop."""
    text = text.strip().replace("**", "").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            inner = text[len(left):len(text) - len(right)]
            if "$" not in inner:
                text = inner.strip()
                break
    return text.rstrip(" .;").strip()


def _answer_line(text: str) -> str | None:
    """What follows the last mention of ``answer`` on its line (or on the next line), cleaned."""
    mentions = list(_ANSWER_WORD.finditer(text))
    if not mentions:
        return None
    rest = text[mentions[-1].end():]
    line, _, after = rest.partition("\n")
    line = _ANSWER_LEAD.sub("", line)
    if not _clean(line):
        line = next((candidate for candidate in after.split("\n") if _clean(candidate)), "")
    answer = _clean(line)
    return answer or None


def _shown(parsed: list[Any]) -> str:
    """math-verify's own text for what it extracted (its fallback string), else the parsed value."""
    shown = _clean(parsed[-1]) if isinstance(parsed[-1], str) else ""
    if not shown or not _balanced(shown):
        shown = str(parsed[0])
    return shown


def _balanced(text: str) -> bool:
    return sum(text.count(c) for c in _OPENERS) == sum(text.count(c) for c in _CLOSERS)


def _read_answer_text(answer: str, timeout_s: int | None, *, boxed: bool) -> tuple[list[Any], str]:
    """An answer on its own (box content, answer line): as LaTeX unless it is prose; and its clean text."""
    words = _NUMBER_WITH_WORDS.match(answer)
    if words:
        return _parse(words.group(1), _LATEX_AND_EXPR, timeout_s), answer
    if not _DOLLAR.search(answer) and (boxed or not _PROSE.search(answer)):
        parsed = _parse(f"${answer}$", _LATEX_AND_EXPR, timeout_s)
        if parsed:
            return parsed, answer
    parsed = _parse(answer, _LATEX_AND_EXPR, timeout_s)
    return parsed, (_shown(parsed) if parsed else "")


def _extract(text: str, timeout_s: int | None) -> tuple[list[Any], str]:
    """The parsed final answer and its clean text."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _read_answer_text(_clean(boxed), timeout_s, boxed=True)
    line = _answer_line(text)
    if line is not None:
        parsed, shown = _read_answer_text(line, timeout_s, boxed=False)
        if parsed:
            return parsed, shown
    if "\n" not in text and not _DOLLAR.search(text):
        return _read_answer_text(_clean(text), timeout_s, boxed=False)
    parsed = _parse(text, _LATEX_AND_EXPR, timeout_s)
    return parsed, (_shown(parsed) if parsed else "")


def _equivalent(gold: tuple[Any, ...], predicted: list[Any], timeout_s: int | None) -> tuple[bool, bool]:
    """``verify``'s any-pair semantics, also telling whether a comparison timed out: (equal, timed_out)."""
    timed_out = False
    for g in gold:
        for p in predicted:
            try:
                if verify(g, p, timeout_seconds=timeout_s, raise_on_error=True):
                    return True, False
            except TimeoutException:
                timed_out = True
            except Exception:
                continue
    return False, timed_out


def _result(reward: float, extracted: str, reason: str | None) -> dict[str, Any]:
    return {"reward": reward, "accuracy": reward, "extracted_answer": extracted, "reason": reason}


def math_verify(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    expected = task.get("expected_answer")
    if expected is None or isinstance(expected, bool) or not isinstance(expected, (str, int, float)):
        raise InvalidTask("math needs the task field 'expected_answer' (a number or LaTeX expression)")
    gold_text = _gold_text(expected)
    if not gold_text:
        raise InvalidTask("math: 'expected_answer' is empty")
    parse_timeout, verify_timeout = _timeouts()
    if parse_timeout is None:
        return _score(expected, gold_text, response, None, None)
    with _keep_pending_alarm():
        return _score(expected, gold_text, response, parse_timeout, verify_timeout)


def _score(expected: object, gold_text: str, response: dict[str, Any], parse_timeout: int | None,
           verify_timeout: int | None) -> dict[str, Any]:
    try:
        gold = _parse_gold(gold_text, parse_timeout)
    except TimeoutException:
        return _result(0.0, "", "timeout")
    if not gold:
        raise InvalidTask(f"math: 'expected_answer' {expected!r} is not a mathematical expression math-verify reads")
    answer = final_answer(response)
    if not answer:
        return _result(0.0, "", "no_answer")
    try:
        predicted, extracted = _extract(answer, parse_timeout)
    except TimeoutException:
        return _result(0.0, "", "timeout")
    if not predicted:
        return _result(0.0, extracted, "no_answer")
    ok, timed_out = _equivalent(gold, predicted, verify_timeout)
    if ok:
        return _result(1.0, extracted, None)
    return _result(0.0, extracted, "timeout" if timed_out else "mismatch")


def _warm_up() -> None:
    # math-verify builds its LaTeX grammar and sympy caches on the first answer (about 0.1 s of CPU). Done at
    # import, the verifier's worker processes (forked from a server process that preloaded this module) start
    # warm, so an ordinary answer is fast even in a replacement worker on a loaded machine.
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": r"\boxed{1/2}"}]}
    math_verify({"expected_answer": "0.5"}, {"output": [said]})


_warm_up()
