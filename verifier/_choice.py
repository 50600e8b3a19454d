"""The ``multiple_choice`` built-in: the option the answer chose, compared with ``expected_answer``.

``expected_answer`` is a letter, or an option's text when the task lists ``options`` (a letter that is one of
the valid letters is read as a letter first). Without ``options`` the valid letters are A–J; with them, one
letter per option (A, B, … up to Z). Letters outside that range are not answers.

The answer judged is the final answer (``verifier._text.final_answer``: reasoning set aside). With
``options``, an option's *text* counts where a letter would (``The answer is Paris``), compared after trimming,
case folding, whitespace collapsing, with ``*``, ``$``, backticks, ``\\boxed{}``/``\\text{}`` and end
punctuation set aside; when option texts are substrings of each other the longest that fits wins
(``Paris, Texas`` over ``Texas`` and ``Paris``). The rules, in order: the first rule that finds something
decides, and within a rule the *last* statement in the text wins (a model that corrects itself is judged on its
correction; an explanation after a statement of rule 3 cannot override it with a weaker mention):

1. The whole answer, or its last line, is a lone letter, however wrapped: ``C``, ``c``, ``(C)``, ``[C]``,
   ``C)``, ``C.``, ``**C**``, ``$C$``, ``\\text{C}``, ``\\boxed{C}``, ``Option C``, ``Answer: C``; or the whole
   answer is an option's text (``Paris``, ``**Paris**``, ``\\boxed{Paris}``).
2. ``\\boxed{…}`` holding a letter (``\\boxed{C}``, ``\\boxed{\\text{C}}``, ``\\boxed{C. Paris}``).
3. An answer statement, keywords in any case: ``answer is C``, ``answer: C``, ``The final answer is (C)``,
   ``answer would be C``, ``Answer: C. Paris``, ``**Answer:** C``, ``"answer": "C"``, ``The correct option
   is C``, ``Correct option: B``, ``My answer: D``, ``My choice is B``, ``The answer to this question is C``;
   or one followed by an option's text (``The answer is Paris, because…``). Not after ``wrong``,
   ``incorrect`` or ``not``: ``The wrong answer is A`` states nothing.
4. A choice or a verdict: ``I'd go with C``, ``I choose B``, ``I pick D``, ``I'll select option A``,
   ``Let's go with B``, ``I'd say C``, ``B is correct``, ``(B) is the correct answer``, ``Option C is the best
   answer``; the same with an option's text (``I'd go with Madrid``, ``Paris is the correct answer``). Not
   when negated (``I wouldn't choose A``, ``A is not correct``).
5. A letter that opens the answer, set off by punctuation: ``C. Paris``, ``C) because…``, ``(C) Paris``,
   ``C: Paris``, ``C - Paris``, ``**C** Paris``, ``C`` then a line break.
6. A conclusion: ``so C.``, ``Therefore, (C).``, ``it's C``, ``That is C.`` (the letter must end its clause),
   ``It's London, not Paris`` (an option's text).
7. With ``options``: the answer ends with an option's text at a word boundary, not after ``not``
   (``The capital of France is Paris.``); else it starts with one set off by punctuation (``Madrid. It is…``).
8. A marked letter: ``(C)``, ``[C]``, ``**C**``, ``Option C`` (upper case only), when the marks name exactly
   one letter; two different marked letters are ambiguous and name none.

What counts as a letter: it stands alone (``C`` in ``Cat`` or ``I'd`` is no letter, nor ``e`` in ``e.g.``).
Upper case letters count after a keyword (``The answer is A because…``); lower case ones too
(``answer: c``), except ``a`` and ``i``, which, unless wrapped (``(a)``, ``**a**``, ``option a``), must end the
clause (``answer: a.``), since ``the answer is a bit unclear`` uses an article. ``I`` unwrapped must end the
clause too (``the answer is I think B`` is a pronoun). A statement naming several letters (``A or B``,
``A/B``, ``A and C.``) is ambiguous: when it is the one that decides, no letter is extracted.

Within a rule a letter and a text compete by position; across rules the earlier rule wins, so ``A. Paris`` is
A even when Paris is B. When nothing is recognised the reward is 0 and ``extracted_answer`` is ``""``.
Regexes are compiled once and their repetitions bounded: this runs inline on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rollgate.verifier._builtins import expected_values, scored
from rollgate.verifier._text import final_answer, normalize
from rollgate.verifier.errors import InvalidTask

__all__ = ["multiple_choice"]

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEFAULT_VALID = _LETTERS[:10]

# What may wrap a letter: space, markdown emphasis, brackets, quotes, $ and LaTeX text/bold/boxed commands.
_OPEN = r"(?:[\s*_(\[{$\"'`]|\\(?:text|textbf|mathrm|mathbf|boxed)\s?\{)"
_CLOSE_CHARS = r"\s*_)\]}$\"'`.:"
_KIND = r"(?i:option|choice|letter)"
# A letter after an intro: its wrapping (and an optional "option") in ``open``, the letter in ``L``.
_AFTER = rf"(?P<open>{_OPEN}{{0,8}}(?:{_KIND}\s{{0,3}}[:#]?{_OPEN}{{0,4}})?)(?P<L>[A-Za-z])(?!\w)"

_LONE = re.compile(
    rf"(?P<open>(?:(?i:(?:final\s+)?answer|option|choice|letter)\s{{0,3}}[:\-]?)?{_OPEN}{{0,8}})"
    rf"(?P<L>[A-Za-z])[{_CLOSE_CHARS}]{{0,8}}"
)
_BOXED = re.compile(r"\\boxed\s?\{(?P<c>[^{}]{0,60}(?:\{[^{}]{0,60}\}[^{}]{0,60})?)\}")
_ANSWER_INTRO = (
    r"(?i:\b(?:answer|ans\b\.?)(?:\s{1,3}(?:choice|option|letter))?"
    r"(?:\s{1,3}(?:to|for)\s{1,3}(?:this|the)\s{1,3}(?:question|problem))?"
    r"|\b(?:correct|right|best|final|my|chosen|selected)\s{1,3}(?:option|choice|letter|pick|selection|response))"
    r"[*_\"']{0,3}\s{0,3}"
    r"(?:(?i:is|was|(?:would|should|must|will)\s{1,3}be)"
    r"(?:\s{1,3}(?i:therefore|thus|clearly|definitely|probably|likely|then|indeed))?\b[*_]{0,3}\s{0,3}[:\-]?"
    r"|[:=\-–—])[*_]{0,3}"
)
_CHOICE_INTRO = (
    r"(?i:\bI(?:['’]d|['’]ll|\s{1,3}would|\s{1,3}will|\s{1,3}now)?\s{1,3}"
    r"(?:say|go\s{1,3}with|choose|chose|pick|picked|select|selected|opt\s{1,3}for|settle\s{1,3}on|vote\s{1,3}for)"
    r"|\b(?:let['’]s|we(?:['’]ll)?)\s{1,3}(?:go\s{1,3}with|choose|pick|select)"
    r"|\bgo(?:ing)?\s{1,3}with|\bchoos(?:e|ing)|\bpick(?:ing)?|\bselect(?:ing)?|\bopt(?:ing)?\s{1,3}for)"
    r"\s{1,3}(?:(?i:the\s{1,3})?(?i:answer|option|choice|letter)\s{0,3}:?(?=\s))?"
)
_STATED = re.compile(_ANSWER_INTRO + _AFTER)
_CHOSEN = re.compile(_CHOICE_INTRO + _AFTER)
_VERDICT = re.compile(
    r"(?<![\w'’])(?P<open>(?:(?i:option|choice|answer)\s{1,3})?[(\[*\"'`$]{0,3})(?P<L>[A-Za-z])"
    r"[)\]*\"'`$]{0,3}\s{1,3}(?i:is|would\s{1,3}be|must\s{1,3}be|should\s{1,3}be|seems\s{1,3}to\s{1,3}be)"
    r"\s{1,3}(?i:the\s{1,3}|an?\s{1,3})?(?i:most\s{1,3})?"
    r"(?i:correct|right|best|true|accurate|appropriate|answer)\b"
)
_LEADING = re.compile(
    rf"(?P<open>{_OPEN}{{0,8}}(?:{_KIND}\s{{0,3}}[:#]?{_OPEN}{{0,4}})?)(?P<L>[A-Za-z])"
    r"(?=[)\]}*$\"'`]|\.(?!\w)|:|\s{0,3}[-–—]\s|[ \t]{0,3}\n|\s{0,3}$)"
)
_CONCLUDING_INTRO = (
    r"(?i:\b(?:so|thus|therefore|hence|it['’]s|it\s{1,3}is|it\s{1,3}must\s{1,3}be|that['’]s|that\s{1,3}is))"
    r"[,:]?\s{1,3}"
)
_CONCLUDED = re.compile(_CONCLUDING_INTRO + _AFTER)
_MARKED = re.compile(
    r"\((?P<a>[A-Z])\)|\[(?P<b>[A-Z])\]|\*\*(?P<c>[A-Z])\*\*|(?i:\boption|\bchoice)\s{1,3}(?P<d>[A-Z])(?!\w)"
)
# The same intros followed by an option's text rather than a letter.
_ANSWER_TEXT = re.compile(_ANSWER_INTRO + r"\s{0,3}")
_CHOICE_TEXT = re.compile(_CHOICE_INTRO + r"\s{0,3}")
_CONCLUDED_TEXT = re.compile(_CONCLUDING_INTRO + r"\s{0,3}")

# After a letter: the clause ends there (end of text, a line break or closing punctuation).
_ENDS_CLAUSE = re.compile(r"[ \t]{0,3}(?:$|\n|[.,;:!?)\]}*$\"'`])")
# After a letter: a second letter joined by "or", "/" or a final "and" — the statement names several.
_SEVERAL = re.compile(
    r"[)\]*]{0,2}\s{0,2}(?:(?i:or)\s{1,2}|/\s{0,2})[(\[*]{0,2}[A-J](?!\w)"
    r"|[)\]*]{0,2}\s{1,2}(?i:and)\s{1,2}[(\[*]{0,2}[A-J](?!\w)[)\]*]{0,2}(?=\s{0,2}(?:$|[.,;!?]|\s(?i:are|both)\b))"
)
# Before an intro: a negation ("not", "wouldn't", "never") or "wrong"/"incorrect" ("the wrong answer is A").
_NEGATED = re.compile(
    r"(?i:(?:\bnot|n['’]t|\bnever|\bwrong|\bincorrect|\bfalse)\s{1,3}(?:\w{1,12}\s{1,3})?(?:the\s{1,3}|an?\s{1,3})?)$"
)
_WRAP_CHARS = frozenset("*([{$\"'`\\_")
_DECORATION = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\s?\{|[*$`{}]")
_END_PUNCT = " \t\n.!?;:,\"'"
_VERDICT_AFTER_TEXT = re.compile(r"\s{1,3}(?:is|would be|must be)\s{1,3}(?:the\s{1,3})?(?:correct|right|answer|best)\b")
_TEXT_SEPARATOR = re.compile(r"\s{0,3}(?:$|[.,;:!)\n]|\s[-–—]\s)")


def _is_letter(text: str, m: re.Match[str], *, ends_clause: bool = False) -> bool:
    """Whether the ``L`` group of ``m`` is a letter that names an option (see the module docstring)."""
    letter = m.group("L")
    end = m.end("L")
    after = text[end:end + 2]
    if after[:1] in ("'", "’") and after[1:2].isalpha():
        return False  # I'd, A's
    if after[:1] == "." and after[1:2].isalnum():
        return False  # e.g., i.e.
    terminated = _ENDS_CLAUSE.match(text, end) is not None
    if ends_clause:
        return terminated
    opener = m.group("open") or ""
    wrapped = any(c in _WRAP_CHARS for c in opener) or any(k in opener.lower() for k in ("option", "choice", "letter"))
    if wrapped:
        return True
    if letter in "aiI":
        return terminated
    return True


def _lone(text: str, valid: str) -> str | None:
    m = _LONE.fullmatch(text.strip())
    if m and m.group("L").upper() in valid:
        return m.group("L").upper()
    return None


def _leading(text: str, valid: str) -> str | None:
    m = _LEADING.match(text.strip())
    if m and m.group("L").upper() in valid and _is_letter(text.strip(), m):
        return m.group("L").upper()
    return None


_Found = tuple[int, str | None]  # (position, letter); None: the statement named several letters


def _last(found: list[_Found]) -> _Found | None:
    return max(found, key=lambda f: f[0]) if found else None


def _stated(text: str, pattern: re.Pattern[str], valid: str, *, ends_clause: bool = False) -> list[_Found]:
    found: list[_Found] = []
    for m in pattern.finditer(text):
        if _NEGATED.search(text, max(0, m.start() - 30), m.start()):
            continue
        if m.group("L").upper() not in valid or not _is_letter(text, m, ends_clause=ends_clause):
            continue
        several = _SEVERAL.match(text, m.end("L")) is not None
        found.append((m.start("L"), None if several else m.group("L").upper()))
    return found


def _boxed(text: str, valid: str) -> list[_Found]:
    found: list[_Found] = []
    for m in _BOXED.finditer(text):
        content = m.group("c")
        letter = _lone(content, valid) or _leading(content, valid)
        if letter:
            found.append((m.start(), letter))
    return found


def _verdicts(text: str, valid: str) -> list[_Found]:
    found: list[_Found] = []
    for m in _VERDICT.finditer(text):
        if m.group("L").upper() in valid and _is_letter(text, m):
            found.append((m.start("L"), m.group("L").upper()))
    return found


def _plain(text: str) -> str:
    """``text`` without decoration, normalised: what option texts are compared with."""
    return normalize(_DECORATION.sub("", text)).strip(_END_PUNCT)


def _word_edge(text: str, index: int) -> bool:
    """Whether ``index`` in ``text`` is not inside a word (the start, the end, or next to a non-alphanumeric)."""
    return index <= 0 or index >= len(text) or not (text[index - 1].isalnum() and text[index].isalnum())


def _longest_first(texts: list[str]) -> list[int]:
    return sorted((i for i, t in enumerate(texts) if t), key=lambda i: -len(texts[i]))


def _texts_after(text: str, intro: re.Pattern[str], texts: list[str], valid: str) -> list[_Found]:
    """Option texts that follow ``intro`` ("The answer is Paris, because…"), the longest that fits."""
    order = _longest_first(texts)
    if not order:
        return []
    span = len(texts[order[0]]) + 40
    firsts = {texts[i][0] for i in order} | {"\\"}
    found: list[_Found] = []
    for m in intro.finditer(text):
        segment = text[m.end(): m.end() + span]
        head = segment.lstrip(" \t\n*$`{}\"'")[:1].casefold()
        if head not in firsts:  # cheap: no option text can start here
            continue
        rest = _plain(segment)
        for i in order:
            if rest.startswith(texts[i]) and _word_edge(rest, len(texts[i])):
                if not _NEGATED.search(text, max(0, m.start() - 30), m.start()):
                    found.append((m.end(), valid[i]))
                break
    return found


def _text_verdicts(text: str, texts: list[str], valid: str) -> list[_Found]:
    """Option texts followed by a verdict ("Paris is correct"); of those ending together, the longest."""
    folded = normalize(_DECORATION.sub("", text))
    by_end: dict[int, tuple[int, int]] = {}  # end -> (start, option index)
    for i in _longest_first(texts):
        t = texts[i]
        at = folded.find(t)
        while at >= 0:
            end = at + len(t)
            if _word_edge(folded, at) and _word_edge(folded, end) and _VERDICT_AFTER_TEXT.match(folded, end):
                by_end.setdefault(end, (at, i))  # longest first: a shorter text ending here is inside it
            at = folded.find(t, at + 1)
    return [(at, valid[i]) for at, i in by_end.values()]


def _text_ends(text: str, texts: list[str], valid: str) -> str | None:
    """The option text the answer ends with (not after "not"), else the one it starts with, set off."""
    plain = _plain(text)
    order = _longest_first(texts)
    for i in order:
        start = len(plain) - len(texts[i])
        if plain.endswith(texts[i]) and _word_edge(plain, start):
            if not _NEGATED.search(plain, max(0, start - 30), start):
                return valid[i]
    for i in order:
        if plain.startswith(texts[i]) and _word_edge(plain, len(texts[i])):
            if _TEXT_SEPARATOR.match(plain, len(texts[i])) is not None:
                return valid[i]
            return None  # a longer option starts the answer: a shorter one must not stand in for it
    return None


def _marked(text: str, valid: str) -> str | None:
    letters = {next(g for g in m.groups() if g) for m in _MARKED.finditer(text)}
    letters &= set(valid)
    return letters.pop() if len(letters) == 1 else None


def _choice_letter(text: str, valid: str, options: list[str] | None = None) -> str | None:
    """The letter ``text`` chose among ``valid`` (``options``: their texts, when known); ``None`` when none."""
    text = text.strip()
    if not text:
        return None
    texts = [_plain(o) for o in options] if options else []
    lines = text.rsplit("\n", 1)
    letter = _lone(text, valid) or (_lone(lines[-1], valid) if len(lines) > 1 else None)
    if letter:
        return letter
    plain = _plain(text)
    if plain and plain in texts:
        return valid[texts.index(plain)]
    tiers: list[Callable[[], list[_Found]]] = [
        lambda: _boxed(text, valid),
        lambda: _stated(text, _STATED, valid) + _texts_after(text, _ANSWER_TEXT, texts, valid),
        lambda: (_stated(text, _CHOSEN, valid) + _verdicts(text, valid)
                 + _texts_after(text, _CHOICE_TEXT, texts, valid) + _text_verdicts(text, texts, valid)),
        lambda: [(0, letter)] if (letter := _leading(text, valid)) else [],
        lambda: (_stated(text, _CONCLUDED, valid, ends_clause=True)
                 + _texts_after(text, _CONCLUDED_TEXT, texts, valid)),
        lambda: [(0, letter)] if texts and (letter := _text_ends(text, texts, valid)) else [],
    ]
    for tier in tiers:
        last = _last(tier())
        if last is not None:
            return last[1]
    return _marked(text, valid)


def multiple_choice(task: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    expected = expected_values(task, "multiple_choice")[0].strip()
    options = task.get("options")
    valid = _DEFAULT_VALID
    texts: list[str] | None = None
    if isinstance(options, list) and options:
        valid = _LETTERS[: min(len(options), len(_LETTERS))]
        texts = [str(o) for o in options[: len(valid)]]
        normalized = [normalize(t) for t in texts]
        if expected.upper() not in valid or len(expected) != 1:
            if normalize(expected) in normalized:  # the answer given as the option's text
                expected = valid[normalized.index(normalize(expected))]
    if len(expected) != 1 or expected.upper() not in valid:
        raise InvalidTask(f"multiple_choice: 'expected_answer' must be one of the letters {valid}, got {expected!r}")
    answer = final_answer(response)
    letter = _choice_letter(answer, valid, texts)
    return scored(1.0 if letter == expected.upper() else 0.0, letter or "", response_text=answer[-200:])
