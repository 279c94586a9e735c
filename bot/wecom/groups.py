"""客户群 API groups wechatpy 2.0.0a26 lacks or calls with an older shape, in wechatpy's style."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from optionaldict import optionaldict
from wechatpy.client.api.base import BaseWeChatAPI

from bot.wecom.api import cursor_pages

MAX_OWNERS = 100  # groupchat/list owner_filter.userid_list
MAX_JOIN_WAY_CHATS = 5  # 加入群聊: chat_id_list
MAX_STATE = 30  # 加入群聊 state, characters
MAX_WELCOME_TEXT_BYTES = 3000  # group_welcome_template/add text.content (edit says 4000; the smaller holds)


class ScrmGroupChat(BaseWeChatAPI):
    """
    客户群管理: list / get, 加入群聊 (join ways), 入群欢迎语素材

    https://developer.work.weixin.qq.com/document/path/92120
    https://developer.work.weixin.qq.com/document/path/92122
    https://developer.work.weixin.qq.com/document/path/92229
    https://developer.work.weixin.qq.com/document/path/92366
    """

    def list(self, cursor: str | None = None, limit: int = 1000, status_filter: int = 0,
             owner_userids: list[str] | None = None) -> dict:
        """获取客户群列表 (cursor paging; ``limit`` 1–1000; ≤ 100 owners in the filter)."""
        if not 1 <= limit <= 1000:
            raise ValueError("groupchat/list limit must be between 1 and 1000")
        if owner_userids is not None and len(owner_userids) > MAX_OWNERS:
            raise ValueError(f"groupchat/list takes at most {MAX_OWNERS} owners")
        data = optionaldict(status_filter=status_filter or None, cursor=cursor or None, limit=limit,
                            owner_filter={"userid_list": owner_userids} if owner_userids else None)
        return self._post("externalcontact/groupchat/list", data=data)

    def gen_list(self, limit: int = 1000, status_filter: int = 0,
                 owner_userids: list[str] | None = None) -> Iterator[dict]:
        """Each page until ``next_cursor`` is empty."""
        return cursor_pages(lambda cursor: self.list(cursor, limit, status_filter, owner_userids))

    def get(self, chat_id: str, need_name: bool = True) -> dict:
        """获取客户群详情 (members, admins, member_version)."""
        return self._post("externalcontact/groupchat/get",
                          data={"chat_id": chat_id, "need_name": 1 if need_name else 0})

    # ------------------------------------------------------------ 加入群聊

    def add_join_way(self, chat_id_list: list[str], state: str = "", remark: str = "", scene: int = 2,
                     auto_create_room: int = 0, room_base_name: str | None = None,
                     room_base_id: int | None = None) -> dict:
        """配置客户群进群方式 (≤ 5 chats; ``state`` ≤ 30 characters) → ``config_id``."""
        _check_join_way(chat_id_list, state, scene)
        data = optionaldict(scene=scene, chat_id_list=chat_id_list, state=state or None, remark=remark or None,
                            auto_create_room=auto_create_room, room_base_name=room_base_name,
                            room_base_id=room_base_id)
        return self._post("externalcontact/groupchat/add_join_way", data=data)

    def get_join_way(self, config_id: str) -> dict:
        return self._post("externalcontact/groupchat/get_join_way", data={"config_id": config_id})

    def update_join_way(self, config_id: str, chat_id_list: list[str], state: str = "", remark: str = "",
                        scene: int = 2, auto_create_room: int = 0) -> dict:
        """A full overwrite: scene and chat_id_list are required again."""
        _check_join_way(chat_id_list, state, scene)
        data = optionaldict(config_id=config_id, scene=scene, chat_id_list=chat_id_list, state=state or None,
                            remark=remark or None, auto_create_room=auto_create_room)
        return self._post("externalcontact/groupchat/update_join_way", data=data)

    def del_join_way(self, config_id: str) -> dict:
        return self._post("externalcontact/groupchat/del_join_way", data={"config_id": config_id})

    # ------------------------------------------------------------ 入群欢迎语素材

    def add_welcome_template(self, text: str, notify: bool = True, **attachment: Any) -> dict:
        """添加入群欢迎语素材 → ``template_id``. ``%NICKNAME%`` becomes the joiner's nickname."""
        _check_welcome_text(text)
        data = optionaldict(text={"content": text}, notify=1 if notify else 0, **attachment)
        return self._post("externalcontact/group_welcome_template/add", data=data)

    def edit_welcome_template(self, template_id: str, text: str, **attachment: Any) -> dict:
        _check_welcome_text(text)
        data = optionaldict(template_id=template_id, text={"content": text}, **attachment)
        return self._post("externalcontact/group_welcome_template/edit", data=data)

    def get_welcome_template(self, template_id: str) -> dict:
        return self._post("externalcontact/group_welcome_template/get", data={"template_id": template_id})

    def del_welcome_template(self, template_id: str) -> dict:
        return self._post("externalcontact/group_welcome_template/del", data={"template_id": template_id})


def _check_join_way(chat_id_list: list[str], state: str, scene: int) -> None:
    if not 1 <= len(chat_id_list) <= MAX_JOIN_WAY_CHATS:
        raise ValueError(f"a join way names 1 to {MAX_JOIN_WAY_CHATS} groups")
    if len(state) > MAX_STATE:
        raise ValueError(f"a join way's state is at most {MAX_STATE} characters")
    if scene not in (1, 2):
        raise ValueError("scene is 1 (mini-program) or 2 (QR code)")


def _check_welcome_text(text: str) -> None:
    if not text.strip():
        raise ValueError("a group welcome needs text")
    if len(text.encode("utf-8")) > MAX_WELCOME_TEXT_BYTES:
        raise ValueError(f"a group welcome's text is at most {MAX_WELCOME_TEXT_BYTES} bytes")


def group_chat(client: Any) -> ScrmGroupChat:
    """The group-chat API on this client (the customer-contact one)."""
    return ScrmGroupChat(client)
