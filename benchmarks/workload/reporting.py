"""The service's reporting side: SQLAlchemy ORM models of a warehouse schema."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    configure_mappers,
    mapped_column,
    relationship,
    sessionmaker,
)


class Base(DeclarativeBase):
    pass


class Warehouse(Base):
    __tablename__ = "warehouse"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    city: Mapped[str] = mapped_column(String(100))
    bins: Mapped[list["Bin"]] = relationship(back_populates="warehouse")


class Bin(Base):
    __tablename__ = "bin"
    __table_args__ = (UniqueConstraint("warehouse_id", "label"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    label: Mapped[str] = mapped_column(String(32))
    warehouse: Mapped[Warehouse] = relationship(back_populates="bins")
    stock: Mapped[list["StockLevel"]] = relationship(back_populates="bin")


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(32), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    discontinued: Mapped[bool] = mapped_column(Boolean, default=False)
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    stock: Mapped[list["StockLevel"]] = relationship(back_populates="item")


class StockLevel(Base):
    __tablename__ = "stock_level"
    __table_args__ = (Index("ix_stock_item_bin", "item_id", "bin_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    bin_id: Mapped[int] = mapped_column(ForeignKey("bin.id"))
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    counted_at: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())
    item: Mapped[Item] = relationship(back_populates="stock")
    bin: Mapped[Bin] = relationship(back_populates="stock")


class Shipment(Base):
    __tablename__ = "shipment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    carrier: Mapped[str] = mapped_column(String(32))
    tracking: Mapped[str] = mapped_column(String(64), index=True)
    shipped_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lines: Mapped[list["ShipmentLine"]] = relationship(back_populates="shipment",
                                                       cascade="all, delete-orphan")


class ShipmentLine(Base):
    __tablename__ = "shipment_line"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipment.id"))
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    shipment: Mapped[Shipment] = relationship(back_populates="lines")
    item: Mapped[Item] = relationship()


configure_mappers()  # what the first query would do; real apps pay it at startup

# Lazy: no connection is made until a session runs a query.
engine = create_engine("sqlite+pysqlite:///:memory:", future=True)
SessionLocal: sessionmaker[Session] = sessionmaker(bind=engine, expire_on_commit=False)

# Statements compiled once at import, as query modules often do.
LOW_STOCK = (
    select(Item.sku, func.sum(StockLevel.quantity).label("qty"))
    .join(StockLevel)
    .group_by(Item.sku)
    .having(func.sum(StockLevel.quantity) < 10)
)
SHIPMENTS_BY_CARRIER = select(Shipment.carrier, func.count(Shipment.id)).group_by(Shipment.carrier)
