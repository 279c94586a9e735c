"""The staff sidebar (聊天工具栏): the H5 page WeCom opens beside a customer chat. Staff sign in by
OAuth2 (snsapi_base), the page registers the JS-SDK with both server-side signatures and asks WeCom
which customer the chat is with, and the server answers only for customers the member follows."""

from bot.web.sidebar.views import bp, init_app

__all__ = ["bp", "init_app"]
