"""客户联系 endpoints wechatpy lacks or calls by their legacy names, in wechatpy's style: 「联系我」
(channel codes) and 在职/离职继承 (customer and group hand-over). WECOM-GROUPS.md §1 and §3."""

from __future__ import annotations

from collections.abc import Iterator

from optionaldict import optionaldict
from wechatpy.client.api.base import BaseWeChatAPI

from bot.wecom.api import cursor_pages

STATE_MAX_CHARS = 30
REMARK_MAX_CHARS = 30
MEMBERS_PER_CONTACT_WAY = 100
CUSTOMERS_PER_TRANSFER = 100
CHATS_PER_TRANSFER = 100
TRANSFER_SUCCESS_MSG_MAX_CHARS = 200


class ScrmContactWay(BaseWeChatAPI):
    """
    配置客户联系「联系我」方式 (adds list_contact_way; checks WeCom's limits before the call)

    https://developer.work.weixin.qq.com/document/path/92228
    """

    def add_contact_way(
        self,
        type: int,  # noqa: A002 - WeCom's field name
        scene: int,
        user: list[str] | None = None,
        party: list[int] | None = None,
        state: str | None = None,
        remark: str | None = None,
        skip_verify: bool = True,
        style: int | None = None,
    ) -> dict:
        """→ ``config_id`` and (scene 2) ``qr_code``. type 1 = one member, 2 = several."""
        _check_way(type, user, party, state, remark)
        data = optionaldict(type=type, scene=scene, style=style, remark=remark, skip_verify=skip_verify,
                            state=state, user=user, party=party)
        return self._post("externalcontact/add_contact_way", data=data)

    def get_contact_way(self, config_id: str) -> dict:
        return self._post("externalcontact/get_contact_way", data={"config_id": config_id})

    def update_contact_way(
        self,
        config_id: str,
        remark: str | None = None,
        skip_verify: bool | None = None,
        style: int | None = None,
        state: str | None = None,
        user: list[str] | None = None,
        party: list[int] | None = None,
    ) -> dict:
        """``remark``, ``user`` and ``party`` overwrite the old values: send the full set."""
        if state is not None and len(state) > STATE_MAX_CHARS:
            raise ValueError(f"state is at most {STATE_MAX_CHARS} characters")
        if remark is not None and len(remark) > REMARK_MAX_CHARS:
            raise ValueError(f"remark is at most {REMARK_MAX_CHARS} characters")
        if user is not None and len(user) > MEMBERS_PER_CONTACT_WAY:
            raise ValueError(f"a contact way takes at most {MEMBERS_PER_CONTACT_WAY} members")
        data = optionaldict(config_id=config_id, remark=remark, skip_verify=skip_verify, style=style, state=state,
                            user=user, party=party)
        return self._post("externalcontact/update_contact_way", data=data)

    def del_contact_way(self, config_id: str) -> dict:
        return self._post("externalcontact/del_contact_way", data={"config_id": config_id})

    def list_contact_way(self, start_time: int | None = None, end_time: int | None = None,
                         cursor: str | None = None, limit: int = 100) -> dict:
        """获取企业已配置的「联系我」列表: ids only (``contact_way[].config_id``), created after
        2021-07-10, temp codes never; ``limit`` ≤ 1000; the window defaults to the last 90 days."""
        if not 1 <= limit <= 1000:
            raise ValueError("list_contact_way limit must be between 1 and 1000")
        data = optionaldict(start_time=start_time, end_time=end_time, cursor=cursor or None, limit=limit)
        return self._post("externalcontact/list_contact_way", data=data)

    def gen_contact_way_ids(self, start_time: int | None = None, end_time: int | None = None,
                            limit: int = 1000) -> Iterator[str]:
        for page in cursor_pages(lambda cursor: self.list_contact_way(start_time, end_time, cursor, limit)):
            for item in page.get("contact_way") or []:
                if item.get("config_id"):
                    yield str(item["config_id"])


def _check_way(type_: int, user: list[str] | None, party: list[int] | None, state: str | None,
               remark: str | None) -> None:
    if type_ not in (1, 2):
        raise ValueError("type is 1 (one member) or 2 (several)")
    if type_ == 1 and (len(user or []) != 1 or party):
        raise ValueError("a single-member contact way takes exactly one user and no party")
    if type_ == 2 and not (user or party):
        raise ValueError("a multi-member contact way needs users or departments")
    if len(user or []) > MEMBERS_PER_CONTACT_WAY:
        raise ValueError(f"a contact way takes at most {MEMBERS_PER_CONTACT_WAY} members")
    if state is not None and len(state) > STATE_MAX_CHARS:
        raise ValueError(f"state is at most {STATE_MAX_CHARS} characters")
    if remark is not None and len(remark) > REMARK_MAX_CHARS:
        raise ValueError(f"remark is at most {REMARK_MAX_CHARS} characters")


class ScrmTransfer(BaseWeChatAPI):
    """
    在职继承 / 离职继承: customers (transfer_customer, resigned/transfer_customer and their results),
    unassigned customers of departed members, and group chats of departed members.
    wechatpy's ``external_contact.transfer`` calls the retired ``externalcontact/transfer``.

    https://developer.work.weixin.qq.com/document/path/92125
    https://developer.work.weixin.qq.com/document/path/92124
    """

    def transfer_customer(self, handover_userid: str, takeover_userid: str, external_userid: list[str],
                          transfer_success_msg: str | None = None) -> dict:
        """分配在职成员的客户 → ``customer[{external_userid, errcode}]``; 0 only means it started."""
        _check_batch(external_userid)
        if transfer_success_msg is not None and len(transfer_success_msg) > TRANSFER_SUCCESS_MSG_MAX_CHARS:
            raise ValueError(f"transfer_success_msg is at most {TRANSFER_SUCCESS_MSG_MAX_CHARS} characters")
        data = optionaldict(handover_userid=handover_userid, takeover_userid=takeover_userid,
                            external_userid=external_userid, transfer_success_msg=transfer_success_msg)
        return self._post("externalcontact/transfer_customer", data=data)

    def transfer_result(self, handover_userid: str, takeover_userid: str, cursor: str | None = None) -> dict:
        """查询在职客户接替状态: status 1 done, 2 waiting, 3 refused, 4 takeover full, 5 no record."""
        data = optionaldict(handover_userid=handover_userid, takeover_userid=takeover_userid, cursor=cursor)
        return self._post("externalcontact/transfer_result", data=data)

    def get_unassigned_list(self, cursor: str | None = None, page_size: int = 1000) -> dict:
        """获取待分配的离职成员列表 → ``info[{handover_userid, external_userid, dimission_time}]``."""
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        data = optionaldict(cursor=cursor or None, page_size=page_size)
        return self._post("externalcontact/get_unassigned_list", data=data)

    def gen_unassigned(self, page_size: int = 1000) -> Iterator[dict]:
        for page in cursor_pages(lambda cursor: self.get_unassigned_list(cursor, page_size)):
            yield from page.get("info") or []

    def resigned_transfer_customer(self, handover_userid: str, takeover_userid: str,
                                   external_userid: list[str]) -> dict:
        """分配离职成员的客户 (no success message; the handover member must have left: else 40097)."""
        _check_batch(external_userid)
        data = {"handover_userid": handover_userid, "takeover_userid": takeover_userid,
                "external_userid": external_userid}
        return self._post("externalcontact/resigned/transfer_customer", data=data)

    def resigned_transfer_result(self, handover_userid: str, takeover_userid: str,
                                 cursor: str | None = None) -> dict:
        data = optionaldict(handover_userid=handover_userid, takeover_userid=takeover_userid, cursor=cursor)
        return self._post("externalcontact/resigned/transfer_result", data=data)

    def gen_result(self, kind: str, handover_userid: str, takeover_userid: str) -> Iterator[dict]:
        """Every ``customer`` row of the pair's result, ``kind`` "onjob" or "resigned"."""
        fetch = self.transfer_result if kind == "onjob" else self.resigned_transfer_result
        for page in cursor_pages(lambda cursor: fetch(handover_userid, takeover_userid, cursor)):
            yield from page.get("customer") or []

    def resigned_group_chats(self, owners: list[str], limit: int = 1000) -> Iterator[str]:
        """Chat ids of departed owners' groups still waiting (groupchat/list status_filter 1). No
        owners: the whole visible range (WeCom answers 81017 when it holds more than 1000 people)."""
        if len(owners) > 100:
            raise ValueError("owner_filter takes at most 100 userids")

        def fetch(cursor: str | None) -> dict:
            data = optionaldict(status_filter=1, owner_filter={"userid_list": owners} if owners else None,
                                cursor=cursor, limit=limit)
            return self._post("externalcontact/groupchat/list", data=data)

        for page in cursor_pages(fetch):
            for item in page.get("group_chat_list") or []:
                yield str(item["chat_id"])

    def groupchat_transfer(self, chat_id_list: list[str], new_owner: str) -> dict:
        """分配离职成员的客户群 → ``failed_chat_list[{chat_id, errcode, errmsg}]`` (failures only)."""
        if not 1 <= len(chat_id_list) <= CHATS_PER_TRANSFER:
            raise ValueError(f"groupchat/transfer takes 1 to {CHATS_PER_TRANSFER} chat ids")
        return self._post("externalcontact/groupchat/transfer",
                          data={"chat_id_list": chat_id_list, "new_owner": new_owner})


def _check_batch(external_userid: list[str]) -> None:
    if not 1 <= len(external_userid) <= CUSTOMERS_PER_TRANSFER:
        raise ValueError(f"a transfer takes 1 to {CUSTOMERS_PER_TRANSFER} customers")
