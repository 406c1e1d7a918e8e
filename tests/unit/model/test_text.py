"""model.text: numbers only from ASCII digits of bounded length, control characters
never printed raw."""

from __future__ import annotations

from tcpsleuth.model.text import is_number, printable, to_int


def test_only_ascii_digits_of_bounded_length_are_numbers() -> None:
    assert to_int("102400") == 102400
    assert to_int("-1") == -1
    assert to_int("²") is None  # str.isdigit() says yes, int() says no
    assert to_int("٣") is None  # int() would read it as 3
    assert to_int("9" * 5000) is None  # int() refuses past 4,300 digits
    assert to_int("9" * 30) == int("9" * 30)
    assert to_int("") is None and to_int("-") is None and to_int("1.5") is None
    assert not is_number(" 1") and not is_number("1\n")


def test_control_characters_are_shown_not_sent() -> None:
    assert printable("nginx\x1b]0;owned\x07") == "nginx\\x1b]0;owned\\x07"
    assert printable("a\x9bb") == "a\\x9bb"  # C1 CSI
    assert printable("a\nb") == "a\\x0ab"
    assert printable("a\nb\tc", keep_newlines=True) == "a\nb\tc"
    assert printable("producer-0 é") == "producer-0 é"
