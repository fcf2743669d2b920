"""Everything the service imports and builds at startup.

Imported by ``workload.wsgi`` (the web app) and by the standalone programs
(``python -m workload.worker``), as a real project's entry points do.
The module-level data stands for what real services build at import: a
catalogue cache, a route table, feature flags and translations. Its size is
set by WORKLOAD_CACHE_ITEMS (default 20000 products).
"""

from __future__ import annotations

import os
import random
import re
from decimal import Decimal

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workload.settings")

import django

django.setup()

import requests  # noqa: E402
from django.contrib import admin  # noqa: E402,F401
from django.contrib.auth import get_user_model  # noqa: E402,F401
from django.core.serializers.json import DjangoJSONEncoder  # noqa: E402,F401
from django.urls import get_resolver  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from workload import reporting, schemas  # noqa: E402
from workload.shop import serializers as shop_serializers  # noqa: E402,F401
from workload.shop import views as shop_views  # noqa: E402,F401

# -- the URLconf, resolved once (Django does it on the first request) ---------
RESOLVER = get_resolver()
RESOLVER._populate()


def _route_table() -> list[tuple[re.Pattern, str]]:
    """A flattened route table: (compiled pattern, view name), as API gateways keep."""
    table = []
    for tenant in range(40):
        for resource in ("products", "orders", "customers", "invoices", "shipments"):
            for suffix in ("", r"(?P<pk>\d+)/", r"(?P<pk>\d+)/history/", r"export\.(csv|json)"):
                table.append((re.compile(rf"^t{tenant}/{resource}/{suffix}$"),
                              f"{resource}-t{tenant}"))
    return table


ROUTES = _route_table()

# -- an outbound HTTP client, configured once ------------------------------------
HTTP = requests.Session()
HTTP.mount("https://", HTTPAdapter(max_retries=Retry(total=3, backoff_factor=0.2),
                                   pool_maxsize=20))
HTTP.headers["User-Agent"] = "workload/1.0"

# -- a product catalogue cache (dicts of dicts: GC-tracked, like real caches) ---
_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
          "zulu red green blue black white steel oak linen wool cotton").split()


def _catalogue(count: int) -> dict[str, dict]:
    rng = random.Random(1234)
    cache = {}
    for i in range(count):
        sku = f"SKU-{i:07d}"
        name = " ".join(rng.choice(_WORDS) for _ in range(4)).title()
        cache[sku] = {
            "id": i,
            "sku": sku,
            "name": name,
            "slug": name.lower().replace(" ", "-") + f"-{i}",
            "price": Decimal(rng.randrange(100, 100000)) / 100,
            "stock": rng.randrange(0, 500),
            "tags": [rng.choice(_WORDS) for _ in range(rng.randrange(1, 6))],
            "attributes": {f"attr{j}": rng.choice(_WORDS) for j in range(rng.randrange(2, 7))},
            "related": [f"SKU-{rng.randrange(count):07d}" for _ in range(3)],
        }
    return cache


CATALOGUE = _catalogue(int(os.environ.get("WORKLOAD_CACHE_ITEMS", "20000")))
BY_TAG: dict[str, list[str]] = {}
for _sku, _product in CATALOGUE.items():
    for _tag in _product["tags"]:
        BY_TAG.setdefault(_tag, []).append(_sku)

FEATURE_FLAGS = {f"flag_{i}": (i % 3 == 0) for i in range(2000)}
TRANSLATIONS = {
    lang: {f"msg.{i}": f"{lang}:{' '.join(_WORDS[(i + k) % len(_WORDS)] for k in range(5))}"
           for i in range(3000)}
    for lang in ("en", "fr", "de", "es", "it")
}

# A few validated sample payloads, as an app warms its schemas.
SAMPLE_PRODUCTS = schemas.PAGE_ADAPTER.validate_python([
    {"id": p["id"], "sku": p["sku"], "name": p["name"],
     "price": {"amount": p["price"]}, "tags": p["tags"], "attributes": p["attributes"]}
    for p in list(CATALOGUE.values())[:500]
])
LOW_STOCK_SQL = str(reporting.LOW_STOCK)
