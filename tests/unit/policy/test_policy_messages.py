"""Every denial and warning text follows the house form (style.md §5) and is used by a rule or the webhook."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from policy import messages

TEXTS = {name: value for name, value in vars(messages).items() if name.isupper() and isinstance(value, str)}
POLICY = Path(messages.__file__).parent


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_message_is_one_lower_case_sentence_without_denied(name: str) -> None:
    text = TEXTS[name]
    assert text[0].islower() or text[0] == "{", name
    assert not text.endswith("."), name
    assert "denied" not in text.lower(), name
    assert ". " not in text.replace("e.g. ", ""), name


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_message_formats_with_its_named_fields(name: str) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(TEXTS[name]) if f}
    assert all(f.isidentifier() for f in fields), name
    TEXTS[name].format(**dict.fromkeys(fields, "x"))


def test_every_message_is_used_by_a_rule_or_the_webhook() -> None:
    users = [*POLICY.rglob("*.py"), *(POLICY.parent / "webhook").rglob("*.py")]
    sources = "\n".join(p.read_text() for p in users if p.name != "messages.py")
    unused = [name for name in TEXTS if f"messages.{name}" not in sources]
    assert unused == []


def test_shown_values_are_quoted_escaped_and_bounded() -> None:
    assert messages.shown("a") == '"a"'
    assert messages.shown('x"\ny') == r'"x\"\ny"'
    assert len(messages.shown("z" * 10_000)) < 100
    assert messages.shown(42) == '"42"'
    assert messages.listed(["b", "a", "b"]) == '"a", "b"'
