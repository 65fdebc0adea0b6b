"""Path ids: a converter that matches only 1..2**63-1, so an id no database column can hold is an
unknown route (JSON 404), never an OverflowError or NumericValueOutOfRange in the query."""
from __future__ import annotations

from werkzeug.routing import IntegerConverter

MAX_ID = 2**63 - 1


class IdConverter(IntegerConverter):
    def __init__(self, map, *args, **kwargs):  # noqa: A002 (werkzeug's name)
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def register(app) -> None:
    app.url_map.converters["id"] = IdConverter
