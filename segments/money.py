"""Money is integer fen everywhere; 元 strings and numbers are converted exactly, never via float."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_YUAN = re.compile(r"(\d{1,13})(?:\.(\d{1,2}))?")


def yuan_to_fen(text: str) -> int:
    """``"12.3"`` → 1230. Accepts 0–2 decimals; raises ValueError on anything else (no sign, no exponent)."""
    match = _YUAN.fullmatch(text.strip())
    if not match and text.strip().startswith("-"):
        raise ValueError(f"amount must not be negative, got {text.strip()!r}")
    if not match:
        raise ValueError(f"amount must be a number of 元 with at most 2 decimals, got {text!r}")
    whole, cents = match.groups()
    return int(whole) * 100 + int((cents or "").ljust(2, "0"))


def number_to_fen(value: int | float | str) -> int:
    """A config number in 元 (int, float or string) → fen, exactly; fails on fractions of a fen."""
    try:
        amount = Decimal(str(value)) * 100
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} 元 is not a whole number of fen")
    return int(amount)


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
