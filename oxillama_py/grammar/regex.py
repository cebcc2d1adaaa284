"""A JSON Schema ``pattern`` as a GBNF expression for the characters inside a JSON string.

Supported: literals and escapes (``\\d \\w \\s \\D \\W \\S``, escaped
punctuation), ``.``, character classes (``[a-z0-9_]``, ``[^,]``), groups
(``(...)``, ``(?:...)``), alternation, and the quantifiers ``* + ? {m} {m,}
{m,n}``. A pattern matches anywhere in the string, as JSON Schema says, unless
it is anchored with ``^`` / ``$``. Anything else (look-around, back-references,
``\\b``, lazy quantifiers, characters that JSON must escape inside a class)
raises :class:`~oxillama_py.errors.GrammarError` naming the construct.
"""

from __future__ import annotations

from ..errors import GrammarError

__all__ = ["pattern_to_gbnf"]

# One character of a JSON string's content, as it is written (escapes included).
JSON_CHAR = '( [^"\\\\\\x00-\\x1f] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )'

# One character matched by ``.``: no escapes, so never a newline (``.`` does not match one).
DOT_CHAR = '[^"\\\\\\x00-\\x1f]'

# Inside a JSON string a raw tab or newline is not allowed: ``\s`` writes a space.
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}
_NEGATED_ESCAPES = {"D": "d", "W": "w", "S": "s"}
_LITERAL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_SPECIAL = set("\\^$.|?*+()[]{}")


def _literal(char: str) -> str:
    """A GBNF expression for ``char`` as it appears inside a JSON string."""
    if char == '"':
        return '"\\\\\\""'  # the two characters \"
    if char == "\\":
        return '"\\\\\\\\"'  # the two characters \\
    if char == "\n":
        return '"\\\\n"'
    if char == "\t":
        return '"\\\\t"'
    if char == "\r":
        return '"\\\\r"'
    if ord(char) < 0x20:
        return f'"\\\\u{ord(char):04x}"'
    return '"' + char + '"'


def _class_char(char: str) -> str:
    if char in "]\\^-":
        return "\\" + char
    return char


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.i = 0

    def fail(self, what: str) -> GrammarError:
        return GrammarError(f"unsupported in 'pattern' {self.pattern!r}: {what}")

    def peek(self) -> str | None:
        return self.pattern[self.i] if self.i < len(self.pattern) else None

    def take(self) -> str:
        char = self.pattern[self.i]
        self.i += 1
        return char

    def alternation(self) -> str:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else "( " + " | ".join(b or '""' for b in branches) + " )"

    def sequence(self) -> str:
        items: list[str] = []
        while (char := self.peek()) is not None and char not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return " ".join(items)

    def quantified(self, atom: str) -> str:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.take()
            suffix = char
        elif char == "{":
            close = self.pattern.find("}", self.i)
            body = self.pattern[self.i + 1 : close] if close > 0 else ""
            low, _, high = body.partition(",")
            if close < 0 or not low.isdigit() or (high and not high.isdigit()):
                raise self.fail(f"the quantifier at {self.i}")
            self.i = close + 1
            suffix = "{" + body + "}"
        else:
            return atom
        if self.peek() in ("?", "+"):
            raise self.fail("lazy or possessive quantifiers")
        return f"( {atom} ){suffix}"

    def atom(self) -> str:
        char = self.take()
        if char == "(":
            if self.peek() == "?":
                self.take()
                if self.peek() != ":":
                    raise self.fail("look-around and named groups")
                self.take()
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("an unbalanced '('")
            self.take()
            return f"( {inner} )" if inner else '""'
        if char == "[":
            return self.char_class()
        if char == ".":
            return DOT_CHAR
        if char == "\\":
            return self.escape(in_class=False)
        if char in "^$":
            raise self.fail(f"'{char}' anywhere but at the pattern's ends")
        if char in _SPECIAL:
            raise self.fail(f"a bare '{char}'")
        return _literal(char)

    def escape(self, *, in_class: bool) -> str:
        if self.peek() is None:
            raise self.fail("a trailing backslash")
        char = self.take()
        if char in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[char] if in_class else f"[{_CLASS_ESCAPES[char]}]"
        if char in _NEGATED_ESCAPES:
            if in_class:
                raise self.fail(f"'\\{char}' inside a class")
            return f'[^{_CLASS_ESCAPES[_NEGATED_ESCAPES[char]]}"\\\\\\x00-\\x1f]'
        if char in _LITERAL_ESCAPES:
            if in_class:
                raise self.fail(f"'\\{char}' inside a class")
            return _literal(_LITERAL_ESCAPES[char])
        if char.isalnum():
            raise self.fail(f"the escape '\\{char}'")
        if in_class:
            if char in '"\\':
                raise self.fail("a quote or backslash inside a class")
            return _class_char(char)
        return _literal(char)

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.take()
        parts: list[str] = []
        first = True
        while True:
            char = self.peek()
            if char is None:
                raise self.fail("an unbalanced '['")
            if char == "]" and not first:
                self.take()
                break
            first = False
            self.take()
            if char == "\\":
                parts.append(self.escape(in_class=True))
            elif char in '"' or ord(char) < 0x20:
                raise self.fail("a quote or control character inside a class")
            elif char == "[":
                raise self.fail("nested classes")
            else:
                parts.append(_class_char(char) if char != "-" or not parts or self.peek() == "]" else "-")
        body = "".join(parts)
        if negated:  # never a raw quote, backslash or control character: JSON would need them escaped
            return f'[^{body}"\\\\\\x00-\\x1f]'
        return f"[{body}]"


def pattern_to_gbnf(pattern: str) -> str:
    """The GBNF expression for the content of a JSON string that ``pattern`` matches."""
    if not isinstance(pattern, str):
        raise GrammarError(f"'pattern' must be a string, got {type(pattern).__name__}")
    body = pattern
    anchored_start = body.startswith("^")
    anchored_end = body.endswith("$") and not body.endswith("\\$")
    body = body[1 if anchored_start else 0 : len(body) - 1 if anchored_end else len(body)]
    parser = _Parser(body)
    expression = parser.alternation()
    if parser.i != len(body):
        raise parser.fail(f"an unbalanced ')' at {parser.i}")
    parts = [] if anchored_start else [f"{JSON_CHAR}*"]
    parts.append(f"( {expression} )" if expression else '""')
    if not anchored_end:
        parts.append(f"{JSON_CHAR}*")
    return " ".join(parts)
