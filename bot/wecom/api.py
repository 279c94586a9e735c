"""API groups wechatpy 2.0.0a26 lacks, written in wechatpy's own style: one class per doc section,
one method per endpoint, ``optionaldict`` for optional fields, generators for cursor paging."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

from optionaldict import optionaldict
from wechatpy.client.api.base import BaseWeChatAPI
from wechatpy.work.client.api import WeChatExternalContact, WeChatJSAPI, WeChatKF, WeChatOAuth

WECOM_OAUTH_AUTHORIZE_URL = "https://open.weixin.qq.com/connect/oauth2/authorize"


def cursor_pages(fetch: Callable[[str | None], dict]) -> Iterator[dict]:
    """Call ``fetch(cursor)`` from the first page until WeCom returns an empty ``next_cursor``."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield page
        cursor = page.get("next_cursor")
        if not cursor:
            return


class ScrmKF(WeChatKF):
    """
    微信客服 (adds ``open_kfid`` to sync_msg, as the current API takes it)

    https://developer.work.weixin.qq.com/document/path/94670
    """

    def sync_msg(  # type: ignore[override]
        self,
        token: str = "",
        cursor: str = "",
        limit: int = 1000,
        open_kfid: str = "",
        voice_format: int | None = None,
    ) -> dict:
        """读取消息. ``limit`` is at most 1000; keep calling while ``has_more`` is 1 even if a page is empty."""
        if not 1 <= limit <= 1000:
            raise ValueError("kf/sync_msg limit must be between 1 and 1000")
        data = optionaldict(
            cursor=cursor or None,
            token=token or None,
            limit=limit,
            voice_format=voice_format,
            open_kfid=open_kfid or None,
        )
        return self._post("kf/sync_msg", data=data)

    def send_msg(self, touser: str, open_kfid: str, msgtype: str, msg_content: dict, msgid: str | None = None) -> dict:
        """发送消息. Only inside the 48-hour / 5-message window after the customer's last message;
        ``msgid`` (≤32 bytes of ``[0-9a-zA-Z_-]``, unique per kf account) makes a resend detectable.
        An errcode of 0 does not mean delivered: WeCom reports failures as ``msg_send_fail`` events."""
        data = {"touser": touser, "open_kfid": open_kfid, "msgtype": msgtype}
        if msgid:
            data["msgid"] = msgid
        data.update(msg_content)
        return self._post("kf/send_msg", data=data)

    def gen_sync_msg(self, token: str, open_kfid: str, cursor: str = "", limit: int = 1000) -> Iterator[dict]:
        """Yield each page (with its ``next_cursor``) until ``has_more`` is 0."""
        while True:
            page = self.sync_msg(token=token, cursor=cursor, limit=limit, open_kfid=open_kfid)
            yield page
            cursor = page.get("next_cursor") or cursor
            if not page.get("has_more"):
                return


class ScrmExternalContact(WeChatExternalContact):
    """
    客户联系: remark and the 企业群发 v2 family (list, task, send result, remind, cancel)

    https://developer.work.weixin.qq.com/document/path/92115
    """

    def get(self, external_userid: str) -> dict:
        """获取客户详情 with every page of follow_user: past 500 members WeCom pages them (cursor in,
        next_cursor out), and wechatpy's ``get`` reads the first page only."""
        contact: dict = {}
        cursor = ""
        for _ in range(1000):
            params = {"external_userid": external_userid, **({"cursor": cursor} if cursor else {})}
            page = self._get("externalcontact/get", params=params)
            if not contact:
                contact = page
            else:
                contact["follow_user"] = [*contact.get("follow_user", []), *(page.get("follow_user") or [])]
            cursor = page.get("next_cursor") or ""
            if not cursor:
                break
        contact.pop("next_cursor", None)
        return contact

    def batch_get_by_users(self, userid_list: list[str], cursor: str = "", limit: int = 100) -> dict:
        """批量获取客户详情 for up to 100 members at once (wechatpy's ``batch_get_by_user`` takes one)."""
        if not 1 <= len(userid_list) <= 100:
            raise ValueError("batch/get_by_user takes 1 to 100 userids")
        data = optionaldict(userid_list=userid_list, cursor=cursor or None, limit=min(limit, 100))
        return self._post("externalcontact/batch/get_by_user", data=data)

    def gen_batch_get_by_users(self, userid_list: list[str], limit: int = 100) -> Iterator[dict]:
        """Yield each page until ``next_cursor`` is empty."""
        return cursor_pages(lambda cursor: self.batch_get_by_users(userid_list, cursor=cursor or "", limit=limit))

    def remark(
        self,
        userid: str,
        external_userid: str,
        remark: str | None = None,
        description: str | None = None,
        remark_company: str | None = None,
        remark_mobiles: list[str] | None = None,
        remark_pic_mediaid: str | None = None,
    ) -> dict:
        """修改客户备注信息 (remark ≤20 chars, description ≤150)."""
        if remark is not None and len(remark) > 20:
            raise ValueError("remark is at most 20 characters")
        if description is not None and len(description) > 150:
            raise ValueError("description is at most 150 characters")
        data = optionaldict(
            userid=userid,
            external_userid=external_userid,
            remark=remark,
            description=description,
            remark_company=remark_company,
            remark_mobiles=remark_mobiles,
            remark_pic_mediaid=remark_pic_mediaid,
        )
        return self._post("externalcontact/remark", data=data)

    def get_groupmsg_list_v2(
        self,
        chat_type: str,
        start_time: int,
        end_time: int,
        creator: str | None = None,
        filter_type: int = 2,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict:
        """获取群发记录列表 (range at most one month; limit ≤100)."""
        data = optionaldict(
            chat_type=chat_type,
            start_time=start_time,
            end_time=end_time,
            creator=creator,
            filter_type=filter_type,
            limit=limit,
            cursor=cursor,
        )
        return self._post("externalcontact/get_groupmsg_list_v2", data=data)

    def get_groupmsg_task(self, msgid: str, limit: int = 500, cursor: str | None = None) -> dict:
        """获取群发成员发送任务列表 (limit ≤1000)."""
        data = optionaldict(msgid=msgid, limit=limit, cursor=cursor)
        return self._post("externalcontact/get_groupmsg_task", data=data)

    def get_groupmsg_send_result(
        self, msgid: str, userid: str, limit: int = 500, cursor: str | None = None
    ) -> dict:
        """获取企业群发成员执行结果: status 0 unsent, 1 sent, 2 not a friend, 3 already received one."""
        data = optionaldict(msgid=msgid, userid=userid, limit=limit, cursor=cursor)
        return self._post("externalcontact/get_groupmsg_send_result", data=data)

    def gen_groupmsg_send_result(self, msgid: str, userid: str, limit: int = 1000) -> Iterator[dict]:
        for page in cursor_pages(lambda cursor: self.get_groupmsg_send_result(msgid, userid, limit, cursor)):
            yield from page.get("send_list", [])

    def remind_groupmsg_send(self, msgid: str) -> dict:
        """提醒成员群发 (at most 3 reminders per mass message per 24 h)."""
        return self._post("externalcontact/remind_groupmsg_send", data={"msgid": msgid})

    def cancel_groupmsg_send(self, msgid: str) -> dict:
        """停止企业群发."""
        return self._post("externalcontact/cancel_groupmsg_send", data={"msgid": msgid})


class ScrmMoment(BaseWeChatAPI):
    """
    客户朋友圈 (no callback exists for likes/comments: poll them)

    https://developer.work.weixin.qq.com/document/path/93333
    """

    def add_moment_task(self, text: dict | None = None, attachments: list | None = None,
                        visible_range: dict | None = None) -> dict:
        data = optionaldict(text=text, attachments=attachments, visible_range=visible_range)
        return self._post("externalcontact/add_moment_task", data=data)

    def get_moment_task_result(self, jobid: str) -> dict:
        return self._get("externalcontact/get_moment_task_result", params={"jobid": jobid})

    def get_moment_list(
        self,
        start_time: int,
        end_time: int,
        creator: str | None = None,
        filter_type: int = 2,
        cursor: str | None = None,
        limit: int = 20,
    ) -> dict:
        """获取企业全部的发表列表 (span ≤30 days)."""
        if end_time - start_time > 30 * 86400:
            raise ValueError("get_moment_list spans at most 30 days")
        data = optionaldict(
            start_time=start_time,
            end_time=end_time,
            creator=creator,
            filter_type=filter_type,
            cursor=cursor,
            limit=limit,
        )
        return self._post("externalcontact/get_moment_list", data=data)

    def gen_moment_list(self, start_time: int, end_time: int, limit: int = 20) -> Iterator[dict]:
        for page in cursor_pages(lambda cursor: self.get_moment_list(start_time, end_time, cursor=cursor,
                                                                     limit=limit)):
            yield from page.get("moment_list", [])

    def get_moment_task(self, moment_id: str, cursor: str | None = None, limit: int = 500) -> dict:
        data = optionaldict(moment_id=moment_id, cursor=cursor, limit=limit)
        return self._post("externalcontact/get_moment_task", data=data)

    def get_moment_customer_list(self, moment_id: str, userid: str, cursor: str | None = None,
                                 limit: int = 500) -> dict:
        data = optionaldict(moment_id=moment_id, userid=userid, cursor=cursor, limit=limit)
        return self._post("externalcontact/get_moment_customer_list", data=data)

    def get_moment_send_result(self, moment_id: str, userid: str, cursor: str | None = None,
                               limit: int = 3000) -> dict:
        data = optionaldict(moment_id=moment_id, userid=userid, cursor=cursor, limit=limit)
        return self._post("externalcontact/get_moment_send_result", data=data)

    def get_moment_comments(self, moment_id: str, userid: str) -> dict:
        """获取客户朋友圈的互动数据: ``comment_list`` and ``like_list``."""
        return self._post("externalcontact/get_moment_comments", data={"moment_id": moment_id, "userid": userid})

    def cancel_moment_task(self, moment_id: str) -> dict:
        return self._post("externalcontact/cancel_moment_task", data={"moment_id": moment_id})


class ScrmOAuth(WeChatOAuth):
    """
    网页授权登录: the current ``auth/getuserinfo`` (wechatpy calls the legacy ``user/getuserinfo``)

    https://developer.work.weixin.qq.com/document/path/91023
    """

    def get_user_info(self, code: str) -> dict:  # type: ignore[override]
        """Member → ``{userid, user_ticket?}``; non-member → ``{openid, external_userid?}``."""
        if not code or len(code) > 512:
            raise ValueError("oauth code must be 1–512 bytes")
        return self._get("auth/getuserinfo", params={"code": code})

    def authorize_url_for_agent(self, redirect_uri: str, state: str, agentid: int, scope: str = "snsapi_base") -> str:
        return authorize_url(self.OAUTH_BASE_URL, self._client.corp_id, redirect_uri, state, agentid, scope)


def authorize_url(base_url: str, corp_id: str, redirect_uri: str, state: str, agentid: int,
                  scope: str = "snsapi_base") -> str:
    """The OAuth2 authorize URL a member's WeCom client is sent to (``state``: a-zA-Z0-9, ≤128 bytes)."""
    return (
        f"{base_url}?appid={quote(corp_id, safe='')}&redirect_uri={quote(redirect_uri, safe='')}"
        f"&response_type=code&scope={scope}&state={state}&agentid={agentid}#wechat_redirect"
    )


def jsapi_signature(ticket: str, noncestr: str, timestamp: int | str, url: str) -> str:
    """JS-SDK signature: sha1 over the four fields in WeCom's fixed order, raw (not URL-encoded)
    values, the page URL without its ``#`` fragment (WECOM.md §8)."""
    page_url = url.split("#", 1)[0]
    text = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={page_url}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class ScrmJSAPI(WeChatJSAPI):
    """
    JS-SDK tickets, cached in the client's session storage (Redis or memory, like the access token)

    wechatpy keys the app ticket by corp only (two apps of one corp would share it) and fetches a new
    one only after expiry; here the corp ticket is kept per corp, the app ticket per corp and agent, and
    both are fetched again ``refresh_margin`` seconds before they expire. WeCom allows 400 fetches an
    hour per corp and 100 per app, so a page load must never fetch one.

    https://developer.work.weixin.qq.com/document/path/90506
    """

    refresh_margin: int = 600
    clock: Callable[[], float] = staticmethod(time.time)

    def get_jsapi_ticket(self) -> str:  # type: ignore[override]
        """The corp jsapi_ticket (for ``wx.config`` / ``ww.register``)."""
        return self._cached(f"{self._client.corp_id}_jsapi_ticket", self.get_ticket)

    def get_agent_jsapi_ticket(self, agentid: int | str = "") -> str:  # type: ignore[override]
        """The app ticket (for ``wx.agentConfig``); ``agentid`` keeps two apps' tickets apart."""
        return self._cached(f"{self._client.corp_id}_{agentid}_agent_jsapi_ticket", self.get_agent_ticket)

    def _cached(self, key: str, fetch: Callable[[], dict]) -> str:
        now = int(self.clock())
        cached = self.session.get(key)
        if isinstance(cached, dict) and cached.get("ticket") and int(cached.get("expires_at", 0)) - \
                self.refresh_margin > now:
            return str(cached["ticket"])
        answer = fetch()
        expires_in = int(answer.get("expires_in") or 7200)
        self.session.set(key, {"ticket": answer["ticket"], "expires_at": now + expires_in}, expires_in)
        return str(answer["ticket"])


