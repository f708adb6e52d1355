"""Spec templates: inferred from a table's column types, or read from a file."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

#: String columns with at most this many distinct values are one-hot encoded;
#: above it, ordinal.
ONE_HOT_MAX_CARDINALITY = 16


def infer_template(table: pa.Table, target: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """numeric → impute (median) + indicator + standardize; bool → 0/1 with
    indicator; string → one-hot (≤ 16 values) or ordinal. The target and
    `exclude` columns are left out."""
    inputs: list[dict[str, Any]] = []
    transforms: list[dict[str, Any]] = []
    for field in table.schema:
        name = field.name
        if name == target or name in exclude:
            continue
        t = field.type
        if pa.types.is_boolean(t):
            inputs.append({"name": name, "dtype": "bool"})
            transforms.append(
                {
                    "type": "numeric",
                    "input": name,
                    "missing": {"strategy": "constant", "value": 0.0, "indicator": True},
                }
            )
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            inputs.append({"name": name, "dtype": "int" if pa.types.is_integer(t) else "float"})
            transforms.append(
                {
                    "type": "numeric",
                    "input": name,
                    "missing": {"strategy": "median", "indicator": True},
                    "steps": [{"op": "standardize"}],
                }
            )
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            inputs.append({"name": name, "dtype": "string"})
            distinct = len(pa.compute.unique(table.column(name)))
            if distinct <= ONE_HOT_MAX_CARDINALITY:
                transforms.append({"type": "one_hot", "input": name, "min_count": 5})
            else:
                transforms.append({"type": "ordinal", "input": name, "min_count": 5})
        else:
            raise ValueError(f"column {name!r} has unsupported type {t}; exclude it or cast it")
    if not inputs:
        raise ValueError("no usable feature columns besides the target")
    return {"format": "riskserve.features/v1", "inputs": inputs, "transforms": transforms}
