"""customers.owner_follows, kept by the database (migration 0019) whoever writes follows, owners or staff."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import delete, exists, insert, select, update

from bot.models import Customer, Follow, Staff
from tests.campaign_data import MORNING, seed_audience


def _flags(db) -> dict[int, bool]:
    with db.sessions() as s:
        return dict(s.execute(select(Customer.id, Customer.owner_follows).order_by(Customer.id)).all())


def _by_definition(db) -> dict[int, bool]:
    live = exists().where(Follow.customer_id == Customer.id, Follow.ended_at.is_(None), Follow.staff_id == Staff.id,
                          Staff.userid == Customer.owner_userid)
    with db.sessions() as s:
        return {cid: bool(v) for cid, v in s.execute(select(Customer.id, live).order_by(Customer.id))}


def test_each_kind_of_write_keeps_whether_the_owner_follows(db):
    a, b = seed_audience(db, {"high": 2})
    assert _flags(db) == {a: True, b: True}  # inserted by a loader, straight into the tables
    with db.begin() as s:
        s.execute(update(Follow).where(Follow.customer_id == a).values(ended_at=MORNING))
    assert _flags(db) == {a: False, b: True}  # the owner stopped following
    with db.begin() as s:
        s.execute(update(Follow).where(Follow.customer_id == a).values(ended_at=None))
        s.get(Customer, b).owner_userid = "lisi"  # an owner who does not follow them
    assert _flags(db) == {a: True, b: False}
    with db.begin() as s:
        s.add(Staff(userid="lisi", name="李四"))
        s.flush()
        s.add(Follow(customer_id=b, staff_id=s.scalar(select(Staff.id).where(Staff.userid == "lisi")), remark="",
                     description="", added_at=MORNING))
    assert _flags(db) == {a: True, b: True}  # the new owner follows them now
    with db.begin() as s:
        s.execute(update(Staff).where(Staff.userid == "zhangsan").values(userid="zhangsan2"))
    assert _flags(db) == {a: False, b: True}  # the owner's userid changed under the customer
    with db.begin() as s:
        s.execute(update(Customer).where(Customer.id == a).values(owner_userid="zhangsan2"))
        s.execute(delete(Follow).where(Follow.customer_id == b))
    assert _flags(db) == {a: True, b: False}
    with db.begin() as s:
        s.execute(insert(Customer), [{"external_userid": "wm_new", "name": "新", "owner_userid": "zhangsan2",
                                      "contact_type": 1, "gender": 0}])
    assert list(_flags(db).values()) == [True, False, False]  # a new customer: no follow yet


def test_a_random_walk_of_writes_never_leaves_the_flag_wrong(db):
    rng = random.Random(5)
    ids = seed_audience(db, {"high": 10, "low": 10}) + seed_audience(db, {"mid": 10}, owner="lisi", start=100)
    with db.begin() as s:
        original = dict(s.execute(select(Staff.id, Staff.userid)).all())
    staff_ids = list(original)
    owners = ["zhangsan", "lisi", "wangwu", None]
    for step in range(120):
        cid = rng.choice(ids)
        with db.begin() as s:
            move = rng.randrange(6)
            if move == 0:
                s.execute(update(Follow).where(Follow.customer_id == cid).values(
                    ended_at=rng.choice([None, MORNING + timedelta(minutes=step)])))
            elif move == 1:
                s.execute(update(Customer).where(Customer.id == cid).values(owner_userid=rng.choice(owners)))
            elif move == 2:
                s.execute(delete(Follow).where(Follow.customer_id == cid, Follow.staff_id == rng.choice(staff_ids)))
            elif move == 3:
                staff_id = rng.choice(staff_ids)
                if s.scalar(select(Follow.id).where(Follow.customer_id == cid, Follow.staff_id == staff_id)) is None:
                    s.add(Follow(customer_id=cid, staff_id=staff_id, remark="", description="", added_at=MORNING))
            elif move == 4:  # a member's userid changed in WeCom, or changed back
                staff_id = rng.choice(staff_ids)
                userid = rng.choice([original[staff_id], f"{original[staff_id]}_renamed"])
                s.execute(update(Staff).where(Staff.id == staff_id).values(userid=userid))
            else:  # a follow moves to another member (none of whose follows is of this customer)
                taken = set(s.scalars(select(Follow.staff_id).where(Follow.customer_id == cid)))
                follow_id = s.scalar(select(Follow.id).where(Follow.customer_id == cid).limit(1))
                free = [i for i in staff_ids if i not in taken]
                if follow_id is not None and free:
                    s.execute(update(Follow).where(Follow.id == follow_id).values(staff_id=rng.choice(free)))
        assert _flags(db) == _by_definition(db), f"after step {step} (move {move})"
