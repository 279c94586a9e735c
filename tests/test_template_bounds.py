"""An operator's template cannot take all memory or CPU: what would build a huge string or loop for ever
is refused in one line (an OverflowError, as ``'x' * 100000`` is), before the work is done, and nested
loops share one budget per render; ordinary templates, and every shipped one, render as before."""

from __future__ import annotations

import re
import time

import pytest
from jinja2 import ChainableUndefined, FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment

from bot.models import Customer
from bot.outbox.bounds import BoundedSandbox
from bot.outbox.messages import MessageTemplates, customer_vars
from templates import MESSAGES_DIR


def render(source: str) -> str:
    return MessageTemplates().env.from_string(source).render(brand="本店")


REFUSED = [
    # what the review demonstrated
    ("{{ 'x'.ljust(100000000)|length }}", "ljust() makes more than 10000"),
    ("{{ '%200000000s'|format('x') }}", "the format filter makes more than"),
    ("{{ 'x'|center(200000000) }}", "the center filter makes more than"),
    ("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", "takes more than 100000 steps"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "takes more than 100000 steps"),
    # the other ways to grow a string in one step
    ("{{ 'x'.rjust(10**8) }}", "rjust()"), ("{{ 'x'.zfill(10**8) }}", "zfill()"),
    ("{{ ('\t' * 1000).expandtabs(100000) }}", "expandtabs()"),
    ("{{ '{:>200000000}'.format('x') }}", "str.format makes more than"),
    ("{{ '{:.200000000f}'.format(1.5) }}", "str.format makes more than"),
    ("{{ '%200000000s' % 'x' }}", "% formatting makes more than"),
    ("{{ '%*s' % (200000000, 'x') }}", "% formatting makes more than"),
    ("{{ ('x' * 5000).replace('x', 'yyyy') }}", "replace() makes more than"),
    ("{{ ('x' * 5000)|replace('x', 'yyyy') }}", "the replace filter makes more than"),
    ("{{ ('y' * 5000).join(['a', 'b', 'c']) }}", "join() makes more than"),
    ("{{ (['a'] * 3000)|join('---') }}", "the join filter makes more than"),
    ("{{ 'x'|indent(10**8, true) }}", "the indent filter makes more than"),
    ("{{ ('x ' * 2000)|wordwrap(1, wrapstring='y' * 10) }}", "the wordwrap filter makes more than"),
    ("{{ [1]|batch(10**8, 'x')|list }}", "the batch filter makes more than"),
    ("{{ [1]|slice(10**8)|list }}", "the slice filter makes more than"),
    ("{{ {'a': 1}|tojson(indent=10**8) }}", "the tojson filter indents at most"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "to_bytes() makes more than"),
    ("{{ ('y' * 6000) ~ ('y' * 6000) }}", "~ makes more than"),
    # growing by doubling, a step at a time
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "+ makes more than"),
    ("{% set ns = namespace(n=10) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "* makes a number of more than 4096 bits"),
    ("{{ ((10 ** 64) ** 64) ** 64 }}", "** makes a number of more than"),
    ("{% set l = ['y' * 5000] %}{{ l * 3 }}", "repeating makes more than"),
    ("{% set x = ['y' * 5000, 'y' * 5000] %}{% set y = [x, x, x] %}{{ y }}", "an output {{ … }} makes more than"),
    ("{% set x = ['y' * 5000, 'y' * 5000] %}{% set y = [x, x, x] %}{{ y == [x, x, x] }}", "a comparison reads"),
    # loops and calls that never end
    ("{% for a in 'x' * 10000 %}{% for b in 'x' * 10000 %}{% endfor %}{% endfor %}", "takes more than"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", "takes more than"),
    ("{% for i in range(30000) %}{{ 'y' * 100 }}{% endfor %}", "takes more than"),
]


@pytest.mark.parametrize(("source", "reason"), REFUSED)
def test_a_template_that_would_grow_without_bound_is_refused_at_once(source, reason):
    started = time.perf_counter()
    with pytest.raises(OverflowError, match=re.escape(reason)) as refused:
        render(source)
    assert time.perf_counter() - started < 2
    assert "\n" not in str(refused.value)


ALLOWED = [
    ("{{ ('x' * 10000)|length }}", "10000"),
    ("{{ '%5s|'|format('ab') }}{{ '%d%%' % 50 }}", "   ab|50%"),
    ("{{ '{:>5}'.format('ab') }}{{ '{0:.2f}'.format(1.5) }}", "   ab1.50"),
    ("{{ 'ab'.ljust(4, '.') }}{{ 'ab'|center(6) }}|", "ab..  ab  |"),
    ("{{ ['a', 'b']|join('、') }} {{ 'a-b'.replace('-', '、') }} {{ '、'.join(['c', 'd']) }}", "a、b a、b c、d"),
    ("{% for i in range(3) %}{% for j in range(3) %}{{ i * j }}{% endfor %}{% endfor %}", "000012024"),
    ("{{ brand ~ '！' }}{{ brand + '？' }}{{ 2 ** 10 }}", "本店！本店？1024"),
    ("{% if brand == '本店' and 'a' in ['a'] and {'k': 1}['k'] == 1 %}是{% endif %}", "是"),
    ("{{ 'hi'|indent(2, true) }}|{{ range(5)|sum }}|{{ [3, 1, 2]|sort|join }}", "  hi|10|123"),
    ("{% macro greet(n) %}您好{{ n }}{% endmacro %}{{ greet(brand) }}", "您好本店"),
    ("{% for x in ['a', 'b'] %}{{ loop.index }}{{ x }}{% if loop.last %}.{% endif %}{% endfor %}", "1a2b."),
    ("{% for i in range(30000) %}{% endfor %}done", "done"),
]


@pytest.mark.parametrize(("source", "expected"), ALLOWED)
def test_ordinary_templates_render_as_before(source, expected):
    assert render(source) == expected


def test_the_budget_is_per_render_and_shared_by_nested_loops():
    env = MessageTemplates().env
    within = env.from_string("{% for i in range(30000) %}{% endfor %}ok")  # 60,000 steps, twice
    assert within.render() == within.render() == "ok"
    nested = env.from_string("{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}")
    with pytest.raises(OverflowError, match="takes more than 100000 steps"):  # 300 small loops: 180,000 steps
        nested.render()


def test_every_shipped_template_renders_as_in_jinjas_own_sandbox():
    options = {"loader": FileSystemLoader(str(MESSAGES_DIR)), "undefined": ChainableUndefined, "autoescape": False,
               "trim_blocks": True, "lstrip_blocks": True, "keep_trailing_newline": False}
    plain, bounded = SandboxedEnvironment(**options), BoundedSandbox(**options)
    customer = Customer(external_userid="wm_x", name="张三", value_tier="high", rfm_segment="important_value",
                        stage="repeat")
    context = {"customer": customer_vars(customer), "brand": "本店", "staff": {"name": "小王"},
               "channel": {"name": "门店"}, "tier_group": {"name": "VIP群", "qr_code": "https://example.com/q"},
               "text": "多少钱", "scene": "menu", "holiday": {"name": "中秋", "code": "mid_autumn"},
               "tier_name": "高价值", "segment_name": "重要价值", "how": "删除",
               "coupon": {"code": "ABCD", "title": "券", "off": "立减10元", "min_spend": "100",
                          "expires": "2026-12-31"},
               "change": {"old": "mid", "new": "high"}, "group": {"name": "群", "tier": "high", "tier_name": "高价值"}}
    names = [name for name in bounded.list_templates() if name.endswith(".j2")]
    assert len(names) > 40
    for name in names:
        assert bounded.get_template(name).render(**context) == plain.get_template(name).render(**context), name
