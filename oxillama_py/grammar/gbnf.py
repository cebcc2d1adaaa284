"""GBNF (llama.cpp's grammar format) read as llguidance's Lark, including GBNF as real tools write it.

llguidance ships the converter; two things make it take what users paste:
deep nesting (llama-cpp-python writes ``maxLength: 200`` as 200 nested
optionals, deeper than Python's default recursion allows and than llguidance's
Lark reader takes) and a start rule named other than ``root``.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable

from llguidance.gbnf_to_lark import gbnf_to_lark

from ..errors import GrammarError

__all__ = ["gbnf_as_lark"]


def gbnf_as_lark(text: str, root: str = "root") -> str:
    """The Lark form of GBNF ``text`` whose start rule is ``root``; ``ValueError`` says what is malformed."""
    try:
        lark = _deep(gbnf_to_lark, _with_root(_rename_start(text), root))
    except GrammarError:
        raise
    except Exception as exc:  # the converter raises plain Exceptions for malformed GBNF
        raise ValueError(str(exc)) from None
    return _flat_repetitions(lark)


# A quoted literal, a /regex/ (Lark) or a [class] (GBNF), escapes included: text that rewriting must not touch.
_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|/(?:[^/\\\n]|\\.)+/|\[(?:[^\]\\]|\\.)*\]')


def _outside_literals(text: str, rewrite: Callable[[str], str]) -> str:
    """``rewrite`` applied to ``text`` with every literal stood in for by a name (the same literal, the same name)."""
    names: dict[str, str] = {}

    def hide(match: re.Match[str]) -> str:
        return names.setdefault(match[0], f"\x00{len(names)}\x00")

    hidden = rewrite(_LITERAL.sub(hide, text))
    literals = {name: literal for literal, name in names.items()}
    return re.sub("\x00[0-9]+\x00", lambda m: literals[m[0]], hidden)


def _rename_start(text: str) -> str:
    """A GBNF rule named ``start`` renamed: llguidance's converter names the start rule so."""
    return _outside_literals(text, lambda t: re.sub(r"(?<![\w-])start(?![\w-])", "start_", t))


_DEEP_LOCK = threading.Lock()


def _deep(function: Callable[..., str], *args: object) -> str:
    """``function(*args)``, and where it recurses too deep for Python's default, again on a thread with room.

    llguidance reads GBNF with a recursive parser, and real GBNF nests deeply:
    llama-cpp-python writes ``maxLength: 200`` as 200 nested optionals.
    """
    try:
        return function(*args)
    except RecursionError:
        pass
    out: list[str] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(function(*args))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    with _DEEP_LOCK:
        limit, size = sys.getrecursionlimit(), threading.stack_size()
        sys.setrecursionlimit(max(limit, 200_000))
        try:
            threading.stack_size(512 * 1024 * 1024)
            thread = threading.Thread(target=run, name="oxillama-gbnf")
            thread.start()
        finally:
            threading.stack_size(size)
        thread.join()
        sys.setrecursionlimit(limit)
    if failed:
        raise failed[0]
    return out[0]


_TWO = re.compile(r"\((\S+) \1\?\)\?")
_MORE = re.compile(r"\((\S+) \1\{0,(\d+)\}\)\?")


def _flat_repetitions(lark: str) -> str:
    """``(x (x (x x?)?)?)?`` as ``x{0,4}``: how llama.cpp's schema converter writes a bounded repetition.

    llguidance's Lark reader refuses nesting that deep (``maxLength: 200`` is
    200 levels), while the repetition means the same and reads flat.
    """

    def flatten(text: str) -> str:
        while True:
            flat = _MORE.sub(lambda m: f"{m[1]}{{0,{int(m[2]) + 1}}}", _TWO.sub(r"\1{0,2}", text))
            if flat == text:
                return flat
            text = flat

    return _outside_literals(lark, flatten)


def _with_root(text: str, root: str) -> str:
    if root == "root":
        return text
    if re.search(r"(?m)^\s*root\s*::=", text):
        raise GrammarError(f"the grammar has a rule named 'root' besides its start rule {root!r}")
    return f"root ::= {root}\n{text}"
