"""parse_flat_xml's fast path for documents of text-only children gives exactly xmltodict's result (and the
same refusal) for any document, flat or not: the inbox's dedupe key is a digest of that result, so a
callback parsed either way must get the same key."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.inbox.xmlsafe import UnsafeXML, _FlatDocument, parse_flat_xml, parse_with_xmltodict

NAMES = st.sampled_from(["ToUserName", "MsgType", "Event", "A", "b", "x:y", "Content", "xml"])
TEXT = st.text(alphabet=st.sampled_from(list("ab 中文\n\t<>&]]'\"") + ["\u00a0", "\u3000"]), max_size=12)


def escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def child(draw: Any, depth: int = 0) -> str:
    name = draw(NAMES)
    attribute = f' k="{escaped(draw(TEXT)).replace(chr(34), "&quot;")}"' if draw(st.integers(0, 9)) == 0 else ""
    kind = draw(st.sampled_from(["text", "text", "cdata", "empty", "selfclosing", "nested", "mixed"]))
    if kind == "selfclosing":
        return f"<{name}{attribute}/>"
    if kind == "cdata":
        body = "<![CDATA[" + draw(TEXT).replace("]]>", "]]") + "]]>"
    elif kind == "empty":
        body = draw(st.sampled_from(["", " ", "\n  "]))
    elif kind in ("nested", "mixed") and depth < 2:
        body = "".join(draw(st.lists(child(depth + 1), max_size=3)))
        if kind == "mixed":
            body = escaped(draw(TEXT)) + body
    else:
        body = escaped(draw(TEXT))
    return f"<{name}{attribute}>{body}</{name}>"


@st.composite
def document(draw: Any) -> bytes:
    root = draw(st.sampled_from(["xml", "xml", "xml", "XML", "root"]))
    separator = draw(st.sampled_from(["", "\n", "  ", " text "]))
    children = draw(st.lists(child(), max_size=8))
    tail = draw(st.sampled_from(["", "", "<!-- note -->", "<?pi x?>", "<", "</xml>"]))
    return f"<{root}>{separator}{separator.join(children)}{separator}</{root}>{tail}".encode()


def outcome(parse: Any, raw: bytes) -> Any:
    try:
        return parse(raw)
    except UnsafeXML as exc:
        return ("refused", str(exc))


@settings(max_examples=600, deadline=None, database=None)
@given(raw=document())
def test_the_fast_path_gives_what_xmltodict_gives(raw):
    assert outcome(parse_flat_xml, raw) == outcome(parse_with_xmltodict, raw)


def test_a_wecom_callback_takes_the_fast_path():
    raw = ("<xml><ToUserName><![CDATA[ww1]]></ToUserName><CreateTime>1403610513</CreateTime>"
           "<MsgType><![CDATA[event]]></MsgType><Content><![CDATA[ 你好 <b>&amp; ]]></Content><Empty/></xml>").encode()
    assert _FlatDocument.parse(raw) == parse_with_xmltodict(raw) == {
        "ToUserName": "ww1", "CreateTime": "1403610513", "MsgType": "event", "Content": "你好 <b>&amp;", "Empty": None}


def test_shapes_the_fast_path_leaves_to_xmltodict():
    for raw in (b"<xml><A>1</A><A>2</A></xml>", b'<xml><A k="v">1</A></xml>', b"<xml><A><B>1</B></A></xml>",
                b"<xml>text<A>1</A></xml>", b"<root><A>1</A></root>", b"<xml></xml>"):
        assert _FlatDocument.parse(raw) is None
