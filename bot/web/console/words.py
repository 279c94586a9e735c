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
    return _first_match(REASONS_ZH, text or "")


def _first_match(table: tuple[tuple[re.Pattern[str], str], ...], text: str) -> str:
    for pattern, words in table:
        if pattern.match(text):
            return pattern.sub(words, text)
    return text


# An operator's name as bot.web.console.accounts.check_operator_name takes it.
NAME_RULE_ZH = "1–64 个字符，不含空格、控制字符或不可见字符（可用中文）"

# Why a form was refused (BroadcastError and the like, English for the CLI), in the console's words.
ERRORS_ZH: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), words) for pattern, words in (
    (r"^choose a send time$", "请选择发送时间"),
    (r"^the send time has passed; choose a later one$", "发送时间已过，请选择更晚的时间"),
    (r"^the send time (.+) is in the past \(now (.+)\); give a later one$",
     r"发送时间 \1 已过（现在 \2），请选择更晚的时间"),
    (r"^send time (.+): use YYYY-MM-DD HH:MM \(local time\)$",
     r"发送时间 \1 无法识别：请用 YYYY-MM-DD HH:MM（本地时间）"),
    (r"^hold-out must be 0–50 percent$", "对照组比例须在 0–50%"),
    (r"^a broadcast needs a name of 1–100 characters$", "群发名称须为 1–100 个字符"),
    (r"^a broadcast named (.+) exists already$", r"已有名为 \1 的群发"),
    (r"^content needs (at least )?a default template.*$", "内容至少需要默认模板（default）"),
    (r"^template (.+) is empty$", r"模板 \1 为空"),
    (r"^template (.+): syntax error on line (\d+): (.+)$", r"模板 \1 第 \2 行语法错误：\3"),
    (r"^template (.+) uses unknown variable\(s\) (.+); available: (.+)$", r"模板 \1 使用了未知变量 \2；可用：\3"),
    (r"^template (.+) renders to more than 4000 bytes \(WeCom's text limit\)$",
     r"模板 \1 渲染后超过 4000 字节（企业微信文本上限）"),
    (r"^give either a send time \(once\) or a cron expression \(repeating\)$",
     "发送时间（一次）与 cron 表达式（重复）二选一"),
    (r"^cron (.+) never fires$", r"cron \1 不会触发"),
    # accounts (bot.web.console.accounts)
    (r"^the name is empty; it needs .+$", f"名称为空；须为 {NAME_RULE_ZH}"),
    (r"^the name has (\d+) characters; it needs .+$", rf"名称有 \1 个字符；须为 {NAME_RULE_ZH}"),
    (r"^the name (.+) contains whitespace; it needs .+$", rf"名称 \1 含有空格等空白字符；须为 {NAME_RULE_ZH}"),
    (r"^the name (.+) contains the invisible character (U\+[0-9A-F]+); it needs .+$",
     rf"名称 \1 含有不可见字符 \2；须为 {NAME_RULE_ZH}"),
    (r"^the name cannot be '\.' or '\.\.' or begin with '/'$", "名称不能是 . 或 ..，也不能以 / 开头"),
    (r"^an operator named (.+) exists already$", r"已有名为 \1 的账号"),
    (r"^role must be one of (.+)$", r"角色须为 \1 之一"),
    (r"^the password needs (\d+)–(\d+) characters$", r"密码须为 \1–\2 个字符"),
))


def error_zh(text: str | None) -> str:
    """The refusal in Chinese where it is one of ERRORS_ZH, else as it is."""
    return _first_match(ERRORS_ZH, text or "")
