"""The console's 账号 page and `scrm user set`: admins add operators and change their role, state and
password; nobody else can; the console never loses its last admin; every change is audited and a
disabled operator or a reset password ends that operator's sessions at once."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from bot.cli import main
from bot.models import AuditEntry, Operator
from tests.campaign_data import MORNING
from tests.console_support import PASSWORD, add_user, csrf, sign_in, signed_in

NEW_PASSWORD = "another long secret"


@pytest.fixture
def console(app):
    app.extensions["scrm.clock"] = lambda: MORNING - timedelta(days=1)
    return app


def operator(db, name):
    with db.sessions() as s:
        return s.scalar(select(Operator).where(Operator.name == name))


def post(client, path, **form):
    return client.post(f"/console{path}", data={**form, "csrf_token": csrf(client)})


def test_an_admin_adds_an_operator_and_changes_role_state_and_password(console, db):
    admin = signed_in(console, "root", "admin")
    page = admin.get("/console/users").get_data(as_text=True)
    assert "添加账号" in page and "root" in page and "账号</a>" in page
    response = post(admin, "/users/add", name="alice", role="operator", password=PASSWORD)
    assert response.status_code == 302 and operator(db, "alice").role == "operator"
    alice = console.test_client()
    assert sign_in(alice, "alice").status_code == 302
    assert alice.get("/console/users").status_code == 403  # operators do not manage accounts

    post(admin, "/users/alice/change", role="viewer", active="1")
    assert operator(db, "alice").role == "viewer"
    assert alice.get("/console/").status_code == 200  # a role change keeps the session; the role applies
    post(admin, "/users/alice/change", active="0")
    assert not operator(db, "alice").active
    assert alice.get("/console/").status_code == 302  # disabled: signed out at once
    post(admin, "/users/alice/change", active="1", password=NEW_PASSWORD)
    assert sign_in(console.test_client(), "alice").status_code == 401  # the old password no longer works
    assert sign_in(console.test_client(), "alice", NEW_PASSWORD).status_code == 302

    with db.sessions() as s:
        changes = [(e.actor, e.target, e.before, e.after) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "user.change").order_by(AuditEntry.id))]
    assert changes == [
        ("root", "operator:alice", {"role": "operator", "active": True}, {"role": "viewer", "active": True}),
        ("root", "operator:alice", {"role": "viewer", "active": True}, {"role": "viewer", "active": False}),
        ("root", "operator:alice", {"role": "viewer", "active": False},
         {"role": "viewer", "active": True, "password": "changed"}),
    ]
    assert NEW_PASSWORD not in repr(changes)


def test_nobody_locks_the_console_out(console, db):
    admin = signed_in(console, "root", "admin")
    page = post(admin, "/users/root/change", role="viewer", active="1")
    assert page.status_code == 302 and operator(db, "root").role == "admin"
    assert "未修改" in admin.get("/console/users").get_data(as_text=True)
    add_user(db, "second", "admin")
    post(admin, "/users/second/change", active="0")
    assert not operator(db, "second").active
    other = console.test_client()
    add_user(db, "third", "admin")
    assert sign_in(other, "third").status_code == 302
    post(other, "/users/root/change", role="operator", active="1")
    assert operator(db, "root").role == "operator"  # another admin remains (third)
    post(other, "/users/third/change", active="0")
    assert operator(db, "third").active  # not oneself
    post(admin, "/users/third/change", role="viewer")  # root is no admin any more: refused outright
    assert operator(db, "third").role == "admin"


def test_an_admin_resets_their_own_password_and_stays_signed_in(console, db):
    admin = signed_in(console, "root", "admin")
    post(admin, "/users/root/change", password=NEW_PASSWORD)
    assert admin.get("/console/users").status_code == 200
    assert sign_in(console.test_client(), "root", NEW_PASSWORD).status_code == 302


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_only_admins_reach_the_accounts_page(console, db, role):
    client = signed_in(console, "someone", role)
    assert client.get("/console/users").status_code == 403
    assert "账号</a>" not in client.get("/console/").get_data(as_text=True)
    assert post(client, "/users/add", name="x", role="admin", password=PASSWORD).status_code == 403
    assert operator(db, "x") is None


def test_bad_input_is_refused_with_a_message(console, db):
    admin = signed_in(console, "root", "admin")
    for form, words in (({"name": "", "role": "operator", "password": PASSWORD}, "名称为空"),
                        ({"name": "bob", "role": "root", "password": PASSWORD}, "角色须为"),
                        ({"name": "bob", "role": "viewer", "password": "short"}, "密码须为 10–256 个字符")):
        response = post(admin, "/users/add", **form)
        assert response.status_code == 400 and f"未添加：{words}" in response.get_data(as_text=True)
    assert operator(db, "bob") is None
    post(admin, "/users/nobody/change", role="viewer")
    assert "no operator named" in admin.get("/console/users").get_data(as_text=True)


def cli(cli_env):
    def scrm(*args, stdin=None):
        return CliRunner(env=cli_env).invoke(main, list(args), input=stdin)

    return scrm


def test_scrm_user_set(cli_env, db):
    scrm = cli(cli_env)
    add_user(db, "root", "admin")
    add_user(db, "alice", "operator")
    assert scrm("user", "set", "alice").exit_code == 2  # nothing to change
    result = scrm("user", "set", "alice", "--role", "viewer", "--disable")
    assert result.exit_code == 0 and "'alice': viewer, disabled" in result.output
    result = scrm("user", "set", "alice", "--enable", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert result.exit_code == 0 and "password changed" in result.output
    result = scrm("user", "set", "root", "--disable")
    assert result.exit_code == 1 and "last active admin" in result.output
    assert scrm("user", "set", "nobody", "--role", "viewer").exit_code == 1
    assert operator(db, "alice").active and operator(db, "root").active


def test_enabling_an_operator_again_does_not_bring_back_their_old_sessions(console, db):
    admin = signed_in(console, "root", "admin")
    alice = signed_in(console, "alice", "operator")
    post(admin, "/users/alice/change", active="0")
    post(admin, "/users/alice/change", active="1")
    assert operator(db, "alice").active
    assert alice.get("/console/").status_code == 302  # the cookie from before the disable is dead
    assert sign_in(alice, "alice").status_code == 302 and alice.get("/console/").status_code == 200


def test_two_admins_disabling_each_other_at_once_leave_one(db):
    """Each change counts the admins left; the second to commit must see the first's change (SQLite: its
    write waits for the lock and then fails on its stale snapshot; PostgreSQL: the count locks the rows)."""
    import threading

    from bot.web.console.accounts import change_operator

    add_user(db, "alice", "admin")
    add_user(db, "bob", "admin")
    first_flushed, outcome = threading.Event(), {}

    def bob_disables_alice() -> None:
        first_flushed.wait(5)
        try:
            with db.begin() as s:
                change_operator(s, "alice", "bob", role=None, active=False)
            outcome["bob"] = "done"
        except Exception as exc:  # noqa: BLE001 - refused one way or the other
            outcome["bob"] = type(exc).__name__

    other = threading.Thread(target=bob_disables_alice)
    other.start()
    with db.begin() as s:
        change_operator(s, "bob", "alice", active=False)
        s.flush()
        first_flushed.set()
        other.join(0.5)  # bob's change is under way, waiting on alice's
    other.join(30)
    assert outcome["bob"] in ("AccountError", "OperationalError")
    with db.sessions() as s:
        assert [o.name for o in s.scalars(select(Operator).where(Operator.active.is_(True)))] == ["alice"]


# ---------------------------------------------------------------- names

BAD_NAMES = {"张 三": "contains whitespace", " alice": "contains whitespace", "alice ": "contains whitespace",
             "": "is empty", "张\u3000三": "contains whitespace", "bob\tx": "contains whitespace",
             "bob\x07": "invisible character U+0007", "b\u200bob": "invisible character U+200B",
             "x" * 65: "has 65 characters", "..": "cannot be '.' or '..'", "/ops": "or begin with '/'"}
GOOD_NAMES = ["张三", "运营-小王", "alice@brand.cn", "华东/运营", "x" * 64]


def test_scrm_user_add_refuses_a_bad_name_in_one_line_and_takes_chinese(cli_env, db):
    scrm = cli(cli_env)
    for name, why in BAD_NAMES.items():
        result = scrm("user", "add", name, "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")
        assert result.exit_code == 1 and why in result.output, (name, result.output)
        assert result.output.startswith("Error: the name") and result.output.count("\n") == 1, result.output
    for name in GOOD_NAMES:
        result = scrm("user", "add", name, "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")
        assert result.exit_code == 0 and f"operator {name!r} (viewer) created" in result.output, result.output
    with db.sessions() as s:
        assert s.scalars(select(Operator.name).order_by(Operator.id)).all() == GOOD_NAMES


def test_the_accounts_page_refuses_a_bad_name_in_chinese_on_the_form(console, db):
    admin = signed_in(console, "root", "admin")
    for name, zh in (("张 三", "名称 '张 三' 含有空格等空白字符"), (" alice", "名称 ' alice' 含有空格等空白字符"),
                     ("b\u200bob", "含有不可见字符 U+200B"), ("x" * 65, "名称有 65 个字符"),
                     ("/ops", "名称不能是 . 或 ..，也不能以 / 开头")):
        response = post(admin, "/users/add", name=name, role="viewer", password=PASSWORD)
        page = response.get_data(as_text=True)
        assert response.status_code == 400 and "未添加：名称" in page and zh in page.replace("&#39;", "'"), page
        assert "1–64 个字符，不含空格、控制字符或不可见字符" in page
        assert '<option value="viewer" selected>' in page  # what was typed stays on the form
    assert post(admin, "/users/add", name="张三", role="viewer", password=PASSWORD).status_code == 302
    with db.sessions() as s:
        assert s.scalars(select(Operator.name).order_by(Operator.id)).all() == ["root", "张三"]


def test_an_operator_whose_name_the_rule_now_refuses_still_signs_in_and_is_managed(console, db, cli_env):
    """A name from before the rule (张 三, with its space) is not checked again."""
    with db.begin() as s:
        s.add(Operator(name="张 三", role="operator", password_hash=generate_password_hash(PASSWORD), active=True))
    assert sign_in(console.test_client(), "张 三").status_code == 302
    admin = signed_in(console, "root", "admin")
    assert post(admin, "/users/张 三/change", role="viewer", active="1").status_code == 302
    assert operator(db, "张 三").role == "viewer"
    scrm = cli(cli_env)
    result = scrm("user", "set", "张 三", "--role", "operator", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert result.exit_code == 0 and "'张 三': operator, active; password changed" in result.output
    assert "张 三" in scrm("user", "list").output
    assert sign_in(console.test_client(), "张 三", NEW_PASSWORD).status_code == 302


def test_an_operator_with_a_slash_in_their_name_is_managed_on_the_accounts_page(console, db):
    admin = signed_in(console, "root", "admin")
    add_user(db, "华东/运营", "operator")
    page = admin.get("/console/users").get_data(as_text=True)
    [action] = {a for a in re.findall(r'action="([^"]+/change)"', page) if "root" not in a}
    response = admin.post(action, data={"role": "viewer", "active": "1", "csrf_token": csrf(admin)})
    assert response.status_code == 302 and operator(db, "华东/运营").role == "viewer"
