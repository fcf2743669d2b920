"""pydantic models for the service's events and outbound API payloads."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    HttpUrl,
    TypeAdapter,
    field_validator,
    model_validator,
)


class Currency(str, enum.Enum):
    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class Money(BaseModel):
    model_config = ConfigDict(frozen=True)
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: Currency = Currency.EUR


class AddressIn(BaseModel):
    line1: str = Field(min_length=1, max_length=200)
    line2: str = ""
    city: str
    postcode: Annotated[str, Field(pattern=r"^[A-Z0-9 -]{3,10}$")]
    country: Annotated[str, Field(min_length=2, max_length=2)]


class LineIn(BaseModel):
    sku: str
    quantity: int = Field(gt=0, le=1000)
    unit_price: Money


class OrderPlaced(BaseModel):
    kind: Literal["order.placed"] = "order.placed"
    order_id: int
    customer_email: str
    lines: list[LineIn]
    shipping: AddressIn
    placed_at: dt.datetime

    @field_validator("customer_email")
    @classmethod
    def has_at(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("not an email address")
        return value.lower()

    @model_validator(mode="after")
    def not_empty(self) -> "OrderPlaced":
        if not self.lines:
            raise ValueError("an order needs lines")
        return self


class OrderShipped(BaseModel):
    kind: Literal["order.shipped"] = "order.shipped"
    order_id: int
    carrier: str
    tracking: str
    shipped_at: dt.datetime


class StockCounted(BaseModel):
    kind: Literal["stock.counted"] = "stock.counted"
    sku: str
    warehouse: str
    quantity: int
    counted_at: dt.datetime


class WebhookTarget(BaseModel):
    url: HttpUrl
    secret: str = Field(min_length=16)
    events: list[str] = []
    active: bool = True


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    sku: str
    name: str
    price: Money
    tags: list[str] = []
    attributes: dict[str, str] = {}


class Page(BaseModel):
    items: list[ProductOut]
    total: int
    offset: int = 0
    limit: int = 50


Event = Annotated[OrderPlaced | OrderShipped | StockCounted, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)
PAGE_ADAPTER: TypeAdapter = TypeAdapter(list[ProductOut])

try:  # EmailStr needs the optional email-validator package; fine without it
    class Contact(BaseModel):
        email: EmailStr
except ImportError:  # pragma: no cover
    Contact = None
