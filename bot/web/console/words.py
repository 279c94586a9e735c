"""The console's words for what the planners and senders record in English (runs, rows, the CLI)."""

from __future__ import annotations

import re

# Why a customer or message is skipped, as the planners record it (English, in runs, rows and the CLI),
# in the console's words; anything not listed shows as recorded.
REASONS_ZH: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), words) for pattern, words in (
    (r"^opted out \(退订\)$", "已退订"),
    (r"^opted out \(退订\) after planning$", "排期后退订"),
    (r"^hold-out group \(not sent, for the effect report\)$", "对照组（不发送，用于效果报告）"),
    (r"^no member to send from \(the owner no longer follows this customer\)$",
     "没有可代发的成员（跟进人已不再跟进该客户）"),
    (r"^brand cap: (\d+) push\(es\) per day reached$", r"已达品牌上限：每天 \1 条"),
    (r"^brand cap: (\d+) pushes per 7 days reached$", r"已达品牌上限：每 7 天 \1 条"),
    (r"^WeCom mass-message cap \((.+): (\d+) per period\) reached$", r"已达企业微信群发上限（\1：每周期 \2 条）"),
    (r"^the coupon is only for \[(.*)\]$", r"优惠券仅限 \1"),
))


def reason_zh(text: str | None) -> str:
    for pattern, words in REASONS_ZH:
        if pattern.match(text or ""):
            return pattern.sub(words, text or "")
    return text or ""
