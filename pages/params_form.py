"""A model's parameter form, generated from its parameter schema (no per-model code in pages)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import streamlit as st

from czb_core.models.params import Param, ParamSchema

NONE = "(none)"


def _widget(param: Param, default: Any, columns: Sequence[str], key: str, offered: Optional[Sequence] = None) -> Any:
    """One widget for one parameter; returns the chosen value (None: the model's default)."""
    label, tip = param.title, f"`{param.name}`: {param.help}"
    if offered is not None:  # the values this variant knows (type to search)
        options = list(offered)
        return st.selectbox(label, options, index=options.index(default) if default in options else None,
                            help=tip, key=key, placeholder=f"choose one of {len(options):,} (type to search)")
    if param.choices is not None:
        options = list(param.choices)
        return st.selectbox(label, options, index=options.index(default) if default in options else 0,
                            help=tip, key=key)
    if param.kind == "bool":
        return st.checkbox(label, value=bool(default), help=tip, key=key)
    if param.obs_column and param.kind == "list":
        return tuple(st.multiselect(label, columns, default=[c for c in default or () if c in columns], help=tip,
                                    key=key))
    if param.obs_column:
        options = [NONE] + list(columns) + [c for c in (*param.extra_options, default) if c and c not in columns]
        chosen = st.selectbox(label, options, index=options.index(default) if default in options else 0,
                              help=tip, key=key)
        return "" if chosen == NONE else chosen
    if param.kind in ("int", "float"):
        cast = int if param.kind == "int" else float
        value = st.number_input(label, value=None if default is None else cast(default),
                                min_value=None if param.minimum is None else cast(param.minimum),
                                step=1 if param.kind == "int" else None, help=tip, key=key,
                                placeholder="model default")
        return None if value is None else cast(value)
    if param.kind in ("list", "mapping"):
        text = ", ".join(f"{k}={v}" for k, v in default.items()) if isinstance(default, dict) else \
            ", ".join(default or ())
        return st.text_input(label, value=text, help=tip, key=key)
    return st.text_input(label, value=str(default or ""), help=tip, key=key)


def parameter_form(schema: ParamSchema, columns: Sequence[str], key_prefix: str, n_columns: int = 3,
                   suggested: Optional[Mapping[str, Optional[str]]] = None,
                   chosen: Optional[Mapping[str, Any]] = None,
                   offered: Optional[Mapping[str, Sequence]] = None) -> dict:
    """Widgets for every parameter, laid out in columns, starting from the defaults with the `suggested`
    obs columns (see `ParamSchema.suggested`) and the values `chosen` elsewhere (a fix applied on the
    Validate page); a parameter in `offered` is chosen from those values only (scGenePT's trained
    perturbations). Returns the values that differ from the defaults."""
    offered = offered or {}
    chosen = {k: v for k, v in (chosen or {}).items() if k in schema.params}
    start = {**schema.suggested(suggested or {}), **{k: schema.resolve(chosen)[k] for k in chosen}}
    values = {}
    grid = st.columns(n_columns)
    for i, param in enumerate(schema):
        with grid[i % n_columns]:
            values[param.name] = _widget(param, start[param.name], columns, f"{key_prefix}_{param.name}",
                                         offered.get(param.name))
    given = {k: v for k, v in values.items() if v is not None}
    return schema.changed(schema.resolve(given))
