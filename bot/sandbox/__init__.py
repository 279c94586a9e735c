"""A faithful local WeCom: keeps state, answers the API with WeCom's JSON and error codes, records
every call, and delivers encrypted callbacks to the bot as Tencent does."""

from bot.sandbox.app import create_sandbox_app
from bot.sandbox.state import SandboxConfig, SandboxState, WeComError
from bot.web.serving import BackgroundServer

__all__ = ["BackgroundServer", "SandboxConfig", "SandboxState", "WeComError", "create_sandbox_app"]
