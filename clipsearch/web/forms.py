"""Inputs and outputs by name: the Refine and PageView records, and Form, their adapter to Gradio's components."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.query import Filters, Paging, Plan, Query


@dataclass(frozen=True)
class Refine:
    """The refine panel: every option the visible UI sends with a search from the Text and Image tabs (the /search
    endpoint takes the same options as its documented parameters). An option is a field here and a component in
    ui.py registered under the field's name."""

    extra_text: str | None = None  # words added to a picture search
    extras: list[str] | None = None  # more example pictures, averaged with the query
    image_weight: float = 0.5
    negative: str | None = None
    negative_weight: float = 0.5
    categories: list[str] | None = None
    match: str = "any"  # "any" or "all" of the categories
    splits: list[str] | None = None
    collapse: bool = False
    diversity: float = 0.0
    min_score: float = 0.0
    min_confidence: float = 0.0  # hits of a description or a lone picture: they carry a calibrated confidence

    def text_query(self, text: str | None) -> Query:
        """A description, with the extra pictures."""
        return Query(text=text, images=list(self.extras or []), image_weight=self.image_weight,
                     negative=self.negative, negative_weight=self.negative_weight)

    def picture_query(self, picture: str) -> Query:
        """A picture and the extra pictures, with the words to add."""
        return dataclasses.replace(self.text_query(self.extra_text), images=[picture, *(self.extras or [])])

    def plan(self, k, page=0) -> Plan:
        """Page `page` of k hits with these filters; every value checked (QueryError with a sentence)."""
        filters = Filters(categories=list(self.categories or []), match_all=self.match == "all",
                          splits=list(self.splits or []))
        return Plan.checked(k, page, filters, self.collapse, self.diversity, self.min_score, self.min_confidence)


@dataclass(frozen=True)
class PageView:
    """What a page of results changes on screen: the grid, the hits as data, the query to page or refine from, the
    "More results" button and the two feedback lists (each value a Gradio update, or gr.skip() to leave it)."""

    results: Any
    hits: list[dict]
    paging: Paging
    more: Any
    liked: Any
    disliked: Any


class Form:
    """The components of a record's fields, each registered under the field's name while the layout is built.

    Given `inputs` as a set of components, Gradio calls the event's function with one dict keyed by component:
    read() turns that dict into the record. Given a dict keyed by component, Gradio updates those outputs: write()
    turns a record into one."""

    def __init__(self, record: type):
        self.record = record
        self._names = [field.name for field in dataclasses.fields(record)]
        self._components: dict[str, Any] = {}

    def __call__(self, name: str, component):
        """Register `component` as the field `name`; returns the component."""
        if name not in self._names or name in self._components:
            raise ValueError(f"{self.record.__name__} has no field {name!r}, or it has a component already")
        self._components[name] = component
        return component

    def __getitem__(self, name: str):
        return self._components[name]

    @property
    def components(self) -> set:
        """Every field's component (as event inputs: Gradio then calls with one dict keyed by component)."""
        missing = [name for name in self._names if name not in self._components]
        if missing:
            raise ValueError(f"no component for {self.record.__name__} field(s) {', '.join(missing)}")
        return set(self._components.values())

    def read(self, values: dict):
        return self.record(**{name: values[component] for name, component in self._components.items()})

    def write(self, record) -> dict:
        """The record as updates keyed by component; anything else (gr.skip(): change nothing) as it is."""
        if not isinstance(record, self.record):
            return record
        return {component: getattr(record, name) for name, component in self._components.items()}
