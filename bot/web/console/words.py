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
    (r"^WeCom per-group cap \((.+): (\d+) per period\) reached$", r"已达企业微信群发上限（每群 \1：每周期 \2 条）"),
    (r"^the group has no owner to send it$", "群没有群主可代发"),
    (r"^broadcast cancelled$", "群发已取消"),
    (r"^SOP cancelled$", "SOP 已取消"),
    # the senders (bot.outbox.sender, bot.outbox.mass, bot.outbox.group_mass), as reason_kind leaves them
    (r"^welcome window passed before sending$", "欢迎语发送时限已过，未发送"),
    (r"^(\S+) window passed before sending$", r"\1 发送时限已过，未发送"),
    (r"^ordered since the step was planned \(it was for customers without an order\)$",
     "排期后已下单（此步骤只发给未下单的客户）"),
    (r"^not sent: the customer already received a mass message this period \(WeCom cap\)$",
     "未发送：该客户本周期已收到过群发（企业微信上限）"),
    (r"^not sent: the customer is no longer the member's friend$", "未发送：客户已不是该成员的好友"),
    (r"^not sent: the group already had its mass messages for this period \(WeCom cap\)$",
     "未发送：该群本周期的群发次数已用完（企业微信上限）"),
    (r"^not sent: the group is gone or the owner is no longer in it$", "未发送：群已解散或群主已不在群内"),
    (r"^WeCom result status (\d+)$", r"企业微信返回结果状态 \1"),
    (r"^waiting for the member to confirm in WeCom$", "等待成员在企业微信中确认"),
    (r"^interrupted; WeCom has it, waiting for the (member|owner) to confirm$",
     "发送中断，企业微信已收到，等待确认"),
    (r"^interrupted before WeCom had it; sent again$", "发送中断，企业微信未收到，已重新提交"),
    (r"^WeCom refused the recipient \(fail_list: not this member's customer\)$",
     "企业微信拒绝该接收人（不是该成员的客户）"),
    (r"^WeCom refused the group \(fail_list\)$", "企业微信拒绝该群"),
    (r"^no owner to send it$", "没有群主可代发"),
    (r"^add_msg_template: WeCom (\d+) \(over the per-minute limit\)$", r"企业微信每分钟调用上限（\1），稍后重新提交"),
    (r"^add_msg_template: WeCom (\d+) (.*); given up$", r"提交群发失败（企业微信 \1 \2），已放弃"),
    (r"^add_msg_template: WeCom (\d+) (.*)$", r"提交群发失败（企业微信 \1 \2）"),
    (r"^WeCom is not configured \(wecom.corp_id / secret\)$", "未配置企业微信（wecom.corp_id / secret）"),
    (r"^the member had 30 app messages this minute or 1,000 this hour \(WeCom drops more\)$",
     "成员本分钟已收 30 条或本小时已收 1000 条应用消息（企业微信会丢弃更多），稍后发送"),
    (r"^(no answer from WeCom on an earlier attempt; )?WeCom 45009: over the API's per-minute limit; given up$",
     "企业微信每分钟调用上限（45009），已放弃"),
    (r"^(no answer from WeCom on an earlier attempt; )?WeCom 45009: over the API's per-minute limit; "
     r"the (\S+) window closes, before WeCom lifts the block$",
     r"企业微信每分钟调用上限（45009），\2 发送时限先到，未发送"),
    (r"^(no answer from WeCom on an earlier attempt; )?WeCom 45009: over the API's per-minute limit$",
     "企业微信每分钟调用上限（45009），稍后重发"),
    (r"^no answer from WeCom on attempt; the (\S+) window closed before the resend, outcome unknown$",
     r"企业微信无应答，\1 发送时限已过，未重发，结果未知"),
    (r"^no answer from WeCom \((\w+)\)( in attempts)?; outcome unknown, not resent( again)?$",
     r"企业微信无应答（\1），结果未知，未重发"),
    (r"^no answer from WeCom \((\w+)\); the (\S+) window closed, so it was not resent$",
     r"企业微信无应答（\1），\2 发送时限已过，未重发"),
    (r"^no answer from WeCom \((\w+)\) on attempt; resending$", r"企业微信无应答（\1），重发中"),
    (r"^no answer from WeCom: interrupted while sending; resending$", "发送中断，重发中"),
    (r"^interrupted while sending; outcome unknown.*$", "发送中断，结果未知，未重发"),
    (r"^WeCom (\d+) on the resend: the attempt that got no answer delivered it$",
     r"已送达（无应答的那次已送达，重发时企业微信答 \1）"),
    (r"^WeCom (\d+): (.+)$", r"企业微信拒绝（\1）：\2"),
))

# The parts of a reason that differ per message (a clock time, an attempt number), which reason_kind drops
# so that one cause is one row wherever the console counts messages by reason.
PER_MESSAGE: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), words) for pattern, words in (
    (r" \(deadline \d{2}:\d{2}:\d{2} UTC\)", ""),
    (r"; (sending|submitting again) at \d{2}:\d{2}:\d{2} UTC", ""),
    (r" (closed|closes) at \d{2}:\d{2}:\d{2} UTC", r" \1"),
    (r" \(attempt \d+\)", ""),
    (r" (on|in) attempt \d+( of \d+)?( attempts)?", r" \1 attempt"),
    (r" in \d+ attempts", " in attempts"),
    (r" after \d+ attempts", ""),
))


def reason_kind(text: str | None) -> str:
    """The reason without its per-message parts (times, attempt numbers): what to group messages by."""
    text = text or ""
    for pattern, words in PER_MESSAGE:
        text = pattern.sub(words, text)
    return text


def reason_zh(text: str | None) -> str:
    return _first_match(REASONS_ZH, reason_kind(text))


def _first_match(table: tuple[tuple[re.Pattern[str], str], ...], text: str) -> str:
    for pattern, words in table:
        if pattern.match(text):
            return pattern.sub(words, text)
    return text


# A broadcast's (or group broadcast's) status, as every console page shows it.
BROADCAST_STATUS_ZH = {"scheduled": "已排期", "done": "已完成", "cancelled": "已取消", "failed": "失败"}


def broadcast_status_zh(status: str | None) -> str:
    return BROADCAST_STATUS_ZH.get(status or "", status or "")


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
    (r"^unknown tag (.+) \(see `scrm tags check` for the tag library\)$",
     r"未知标签 \1（标签库见「标签」页，或运行 scrm tags check）"),
    # accounts (bot.web.console.accounts)
    (r"^the name is empty; it needs .+$", f"名称为空；须为 {NAME_RULE_ZH}"),
    (r"^the name has (\d+) characters; it needs .+$", rf"名称有 \1 个字符；须为 {NAME_RULE_ZH}"),
    (r"^the name (.+) contains whitespace; it needs .+$", rf"名称 \1 含有空格等空白字符；须为 {NAME_RULE_ZH}"),
    (r"^the name (.+) contains the invisible character (U\+[0-9A-F]+); it needs .+$",
     rf"名称 \1 含有不可见字符 \2；须为 {NAME_RULE_ZH}"),
    (r"^the name cannot be '\.' or '\.\.' or begin with '/'$", "名称不能是 . 或 ..，也不能以 / 开头"),
    (r"^an operator named (.+) exists already$", r"已有名为 \1 的账号"),
    (r"^role must be one of (.+)$", r"角色须为 \1 之一"),
    (r"^only admins manage accounts$", "只有管理员（admin）可以管理账号"),
    (r"^the password needs (\d+)–(\d+) characters$", r"密码须为 \1–\2 个字符"),
))


def error_zh(text: str | None) -> str:
    """The refusal in Chinese where it is one of ERRORS_ZH, else as it is."""
    return _first_match(ERRORS_ZH, text or "")
