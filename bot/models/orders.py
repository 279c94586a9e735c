"""Orders (paid or refunded). Amounts are integer fen: exact, never float."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, ByteOrderString, utcnow

ORDER_STATUSES = ("paid", "refunded")


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_customer_id_paid_at", "customer_id", "paid_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(ByteOrderString(128), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    amount_fen: Mapped[int]
    paid_at: Mapped[datetime]
    # The local calendar day of paid_at (date.toordinal() in app.timezone): recency is whole local days.
    paid_day: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="paid")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Order {self.order_id} {self.amount_fen}fen {self.status}>"
