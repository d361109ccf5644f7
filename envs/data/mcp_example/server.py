"""The example MCP server for the `mcp` env: units, a small inventory, dates and text.

Run over stdio (the default) or streamable HTTP:

    python server.py
    python server.py --transport streamable-http --port 8765   # serves http://127.0.0.1:8765/mcp

The tools are plain typed, documented functions; MCPServer derives their schemas.
A tool that raises ToolError (an unknown unit, an unknown SKU) comes back to the
client as an error result with its message, which the env shows the agent as an
observation; any other exception is a crash and the client gets a generic message.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from typing import Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# Factors to a base unit per dimension; temperature is affine and handled apart.
_FACTORS = {
    "length": {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048, "in": 0.0254},
    "mass": {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125},
    "volume": {"l": 1.0, "ml": 0.001, "gal": 3.785411784},
}
_TEMPERATURE = ("C", "F", "K")

INVENTORY = {
    "A-100": {"name": "steel bolt M8", "quantity": 1200, "unit_price": 0.15, "weight_kg": 0.012, "warehouse": "north"},
    "A-200": {"name": "hex nut M8", "quantity": 3400, "unit_price": 0.05, "weight_kg": 0.006, "warehouse": "north"},
    "B-310": {"name": "copper pipe 2m", "quantity": 85, "unit_price": 12.4, "weight_kg": 1.8, "warehouse": "south"},
    "B-420": {"name": "pvc elbow joint", "quantity": 640, "unit_price": 0.9, "weight_kg": 0.05, "warehouse": "south"},
    "C-007": {"name": "cordless drill", "quantity": 14, "unit_price": 89.0, "weight_kg": 1.6, "warehouse": "east"},
    "C-015": {"name": "safety goggles", "quantity": 230, "unit_price": 4.25, "weight_kg": 0.08, "warehouse": "east"},
    "D-501": {"name": "paint bucket 10l", "quantity": 42, "unit_price": 31.5, "weight_kg": 11.2, "warehouse": "west"},
}


def _dimension(unit: str) -> str:
    for dim, table in _FACTORS.items():
        if unit in table:
            return dim
    if unit in _TEMPERATURE:
        return "temperature"
    known = ", ".join([u for t in _FACTORS.values() for u in t] + list(_TEMPERATURE))
    raise ToolError(f"unknown unit {unit!r}; known units: {known}")


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a quantity between units of length, mass, volume or temperature.

    Args:
        value: The quantity to convert.
        from_unit: Its unit: m, km, cm, mm, mi, ft, in, kg, g, lb, oz, l, ml, gal, C, F or K.
        to_unit: The unit wanted, of the same dimension as from_unit.
    """
    a, b = _dimension(from_unit), _dimension(to_unit)
    if a != b:
        raise ToolError(f"cannot convert {a} ({from_unit}) to {b} ({to_unit})")
    if a == "temperature":
        return round(_from_kelvin(_to_kelvin(value, from_unit), to_unit), 4)
    return round(value * _FACTORS[a][from_unit] / _FACTORS[a][to_unit], 4)


def inventory_lookup(sku: str) -> dict:
    """Look up one item of the warehouse inventory by its SKU.

    Args:
        sku: The item's stock-keeping unit, e.g. A-100.
    """
    item = INVENTORY.get(sku.strip().upper())
    if item is None:
        raise ToolError(f"unknown SKU {sku!r}; known SKUs: {', '.join(INVENTORY)}")
    return {"sku": sku.strip().upper(), **item}


def list_inventory(warehouse: Literal["north", "south", "east", "west", "all"] = "all") -> list[str]:
    """List the SKUs stocked in one warehouse, or in all of them.

    Args:
        warehouse: north, south, east, west, or all.
    """
    return [sku for sku, item in INVENTORY.items() if warehouse in ("all", item["warehouse"])]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ToolError(f"{text!r} is not a date; write it as YYYY-MM-DD") from None


def date_diff(start: str, end: str) -> dict:
    """Days from one ISO date to another, and the weekday of each.

    Args:
        start: The first date, YYYY-MM-DD.
        end: The second date, YYYY-MM-DD.
    """
    a, b = _date(start), _date(end)
    return {"days": (b - a).days, "start_weekday": a.strftime("%A"), "end_weekday": b.strftime("%A")}


def text_tool(text: str, operation: Literal["reverse", "upper", "lower", "slugify", "word_count",
                                            "char_count", "vowel_count"]) -> str:
    """Apply one string operation to a text.

    Args:
        text: The input text.
        operation: reverse, upper, lower, slugify, word_count, char_count or vowel_count.
    """
    ops = {
        "reverse": lambda s: s[::-1],
        "upper": str.upper,
        "lower": str.lower,
        "slugify": lambda s: re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-"),
        "word_count": lambda s: str(len(s.split())),
        "char_count": lambda s: str(len(s)),
        "vowel_count": lambda s: str(sum(ch in "aeiouAEIOU" for ch in s)),
    }
    return ops[operation](text)


TOOLS = (convert_units, inventory_lookup, list_inventory, date_diff, text_tool)


def build_server() -> MCPServer:
    server = MCPServer("trajdistill-mcp-example", log_level="WARNING")
    for fn in TOOLS:
        server.add_tool(fn)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = build_server()
    if args.transport == "stdio":
        server.run()
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
