"""Request-time filters: what a list may hold, decided per request (a category page, a price range,
items already on the page, in stock only), and the catalog's availability, which always applies.

Filters are applied to the candidates before ranking, and a list short of ``k`` is topped up from
the most popular items that pass, so a list holds ``k`` items whenever enough of the catalog
passes. They are part of the request, recorded in its manifest, so ``explain`` recomputes the same
list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.catalog import Catalog
from insession.errors import FieldError, ValidationError, describe
from insession.events import MAX_ID_CHARS, text_problem

MAX_FILTER_VALUES = 200


@dataclass(frozen=True, slots=True)
class Filters:
    """What a list may hold. Categories: ``include_categories`` (any of them) and none of
    ``exclude_categories``; price within ``min_price``..``max_price`` (an item without a price
    passes only when no range is given); none of ``exclude_items``; ``available_only``: only items
    known to be available (an unavailable item is never served, filters or not)."""

    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    exclude_items: tuple[str, ...] = ()
    available_only: bool = False

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        for name in ("include_categories", "exclude_categories", "exclude_items"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) > MAX_FILTER_VALUES:
                errors.append(
                    FieldError(f"filters.{name}", f"a list of at most {MAX_FILTER_VALUES} strings", describe(values))
                )
                continue
            for value in values:
                if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or text_problem(value):
                    errors.append(
                        FieldError(f"filters.{name}", f"strings of 1 to {MAX_ID_CHARS} characters", describe(value))
                    )
                    break
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            bad = value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf
            )
            if bad:
                errors.append(FieldError(f"filters.{name}", "a finite number >= 0", describe(value)))
        if not errors and self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            errors.append(
                FieldError("filters.min_price", f"at most max_price ({self.max_price})", describe(self.min_price))
            )
        if not isinstance(self.available_only, bool):
            errors.append(FieldError("filters.available_only", "true or false", describe(self.available_only)))
        if errors:
            raise ValidationError(errors)

    @property
    def empty(self) -> bool:
        return self == NO_FILTERS

    def to_dict(self) -> dict[str, Any]:
        """The filters that are set (the manifest keeps only these)."""
        out: dict[str, Any] = {}
        for name in ("include_categories", "exclude_categories", "exclude_items"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        for name in ("min_price", "max_price"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.available_only:
            out["available_only"] = True
        return out

    @staticmethod
    def from_dict(raw: Mapping[str, Any] | None) -> Filters:
        if not raw:
            return NO_FILTERS
        known = {
            "include_categories",
            "exclude_categories",
            "min_price",
            "max_price",
            "exclude_items",
            "available_only",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationError(
                [FieldError(f"filters.{unknown[0]}", f"one of {', '.join(sorted(known))}", "an unknown filter")]
            )

        def strings(name: str) -> tuple[str, ...]:
            value = raw.get(name) or ()
            return tuple(value) if isinstance(value, list | tuple) else value

        return Filters(
            include_categories=strings("include_categories"),
            exclude_categories=strings("exclude_categories"),
            min_price=raw.get("min_price"),
            max_price=raw.get("max_price"),
            exclude_items=strings("exclude_items"),
            available_only=raw.get("available_only", False),
        )


NO_FILTERS = Filters()


def allowed(catalog: Catalog, items: npt.NDArray[np.int64], filters: Filters) -> npt.NDArray[np.bool_]:
    """Which of ``items`` (dense indices) a list under ``filters`` may hold; unavailable items never."""
    availability = catalog.availability[items]
    ok: npt.NDArray[np.bool_] = availability != 0
    if filters.empty:
        return ok
    if filters.available_only:
        ok &= availability == 1
    codes = catalog.category_codes[items]
    if filters.include_categories:
        ok &= np.isin(codes, _codes(catalog, filters.include_categories))
    if filters.exclude_categories:
        ok &= ~np.isin(codes, _codes(catalog, filters.exclude_categories))
    if filters.min_price is not None or filters.max_price is not None:
        prices = catalog.prices[items]
        low = -math.inf if filters.min_price is None else filters.min_price
        high = math.inf if filters.max_price is None else filters.max_price
        ok &= (prices >= low) & (prices <= high)  # NaN (no price) fails both
    if filters.exclude_items:
        index = catalog.index
        banned = np.fromiter((index[i] for i in filters.exclude_items if i in index), dtype=np.int64)
        ok &= ~np.isin(items, banned)
    return ok


def _codes(catalog: Catalog, names: Sequence[str]) -> npt.NDArray[np.int32]:
    index = catalog.category_index
    return np.fromiter((index[n] for n in names if n in index), dtype=np.int32)


def restricts(catalog: Catalog, filters: Filters) -> bool:
    """Whether anything is filtered at all (the catalog holds unavailable items, or filters are set)."""
    return catalog.has_unavailable or not filters.empty


__all__ = ["NO_FILTERS", "Filters", "allowed", "restricts"]
