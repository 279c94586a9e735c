"""The app's callback credentials as wechatpy ``WeChatCrypto`` objects.

WeCom lets each callback configuration (the self-built app, 客户联系's own 接收事件服务器, the 微信客服
system app's 回调配置) have its own Token and EncodingAESKey; a request is checked against each until
one signature matches and its payload decrypts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wechatpy.exceptions import InvalidSignatureException
from wechatpy.work.crypto import WeChatCrypto
from wechatpy.work.exceptions import InvalidCorpIdException

from bot.core.config import WeComSettings


class CallbackRejected(Exception):
    """A callback that must not be stored; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Keyring:
    cryptos: tuple[WeChatCrypto, ...]

    @classmethod
    def from_settings(cls, w: WeComSettings) -> Keyring:
        pairs = [(w.token, w.encoding_aes_key), (w.contact_token, w.contact_encoding_aes_key),
                 (w.kf_token, w.kf_encoding_aes_key)]
        return cls(tuple(WeChatCrypto(t, k, w.corp_id) for t, k in pairs if t and k))

    def verify_url(self, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        return self._run(lambda c: c.check_signature(signature, timestamp, nonce, echostr))

    def decrypt(self, encrypt: str, signature: str, timestamp: str, nonce: str) -> str:
        return self._run(lambda c: c.decrypt_message({"Encrypt": encrypt}, signature, timestamp, nonce))

    def _run(self, operation) -> str:  # type: ignore[no-untyped-def]
        if not self.cryptos:
            raise CallbackRejected(503, "no callback token/encoding_aes_key configured")
        # Two configurations may share a Token with different EncodingAESKeys: a matching signature whose
        # decryption fails goes on to the next configuration; the first refusal is the answer if none works.
        refusal: CallbackRejected | None = None
        for crypto in self.cryptos:
            try:
                return operation(crypto)
            except InvalidSignatureException:
                continue
            except InvalidCorpIdException:
                refusal = refusal or CallbackRejected(403, "receive id in the message does not match wecom.corp_id")
            except (ValueError, TypeError, IndexError, struct.error) as exc:
                # binascii.Error and UnicodeDecodeError are ValueErrors too.
                refusal = refusal or CallbackRejected(400, f"cannot decrypt: {type(exc).__name__}")
        raise refusal or CallbackRejected(403, "msg_signature does not match")
