"""Money is integer fen everywhere; 元 strings and numbers are converted exactly, never via float."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MAX_WHOLE_DIGITS = 13  # 元 below 10^13: the bound of a text amount, and of a number too
_YUAN = re.compile(rf"(\d{{1,{MAX_WHOLE_DIGITS}}})(?:\.(\d{{1,2}}))?", re.ASCII)
_CENT = Decimal("0.01")


def yuan_to_fen(text: str) -> int:
    """``"12.3"`` → 1230. Accepts 0–2 decimals; raises ValueError on anything else (no sign, no exponent)."""
    _ascii_digits(text.strip())
    match = _YUAN.fullmatch(text.strip())
    if not match and text.strip().startswith("-"):
        zero = _YUAN.fullmatch(text.strip()[1:])
        if zero and not any(ch not in "0." for ch in zero.group(0)):
            return 0  # "-0" and "-0.00" are zero, as a spreadsheet may write them
        raise ValueError(f"amount must not be negative, got {text.strip()!r}")
    if not match:
        raise ValueError(f"amount must be a number of 元 with at most 2 decimals, got {text[:40]!r}")
    whole, cents = match.groups()
    return int(whole) * 100 + int((cents or "").ljust(2, "0"))


def number_to_fen(value: int | float | str | Decimal) -> int:
    """A number in 元 (int, float, Decimal or string) → fen, exactly; fails on fractions of a fen,
    on infinities and NaN, and on amounts of 10^13 元 or more (as text amounts do)."""
    if isinstance(value, str):
        value = value.strip()  # a spreadsheet's or an input method's spaces (U+00A0, U+3000) around it
        _ascii_digits(value)
    try:
        shown = str(value)[:40]
        yuan = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):  # ValueError: an int too long to print
        raise ValueError(f"not a number: {type(value).__name__}") from None
    # Checked without arithmetic, which would overflow on 1e999999999 (adjusted() is the exponent of the first digit).
    if not yuan.is_finite() or (yuan != 0 and yuan.adjusted() >= MAX_WHOLE_DIGITS):
        raise ValueError(f"{shown} 元 is not a number below 10^{MAX_WHOLE_DIGITS}")
    if yuan != yuan.quantize(_CENT):
        raise ValueError(f"{shown} 元 is not a whole number of fen")
    return int(yuan.quantize(_CENT) * 100)


def _ascii_digits(text: str) -> None:
    """``text`` without its surrounding spaces, which may be any script's (U+00A0, U+3000)."""
    if not text.isascii():  # \d and Decimal read other scripts' digits: "١٢٨" or "１２８" would be 128 元 unseen
        raise ValueError(f"amount must be written with the digits 0-9, got {text.strip()[:40]!r}")


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
