"""Typed reads of a parsed TOML table, each failure one line saying where.

What every table of a lab scenario needs (parse.py, and new step kinds'
tables): known keys only, required ones present, values of the right type,
addresses that parse. Failures raise `Bad` with the place in the file
("[[veth]] #2 a 'veth0': ..."); parse.parse turns it into a UserError naming
the file.
"""

from __future__ import annotations

import ipaddress
from typing import Any


class Bad(Exception):
    pass


def keys(table: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise Bad(f"{where} must be a table")
    unknown = sorted(set(table) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise Bad(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed})")
    missing = sorted(required - set(table))
    if missing:
        raise Bad(f"{where}: missing key {missing[0]!r}")
    return table


def typed(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(value, bool) and kind is int:
        raise Bad(f"{where}: {what} must be an integer")
    if not isinstance(value, kind):
        names = {str: "a string", bool: "true or false", int: "an integer", list: "a list"}
        label = names.get(kind, str(kind)) if isinstance(kind, type) else "of another type"
        raise Bad(f"{where}: {what} must be {label}")
    return value


def tables(table: dict[str, Any], key: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise Bad(f"[[{key}]] must be an array of tables (write [[{key}]])")
    return value


def cidr(value: Any, where: str) -> str:
    typed(value, str, where, "an address")
    if "/" not in value:
        raise Bad(f"{where}: address {value!r} needs a prefix length (e.g. {value}/24)")
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise Bad(f"{where}: {value!r} is not a valid address/prefix") from None
    return str(value)


def ip(value: Any, where: str, what: str) -> str:
    typed(value, str, where, what)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise Bad(f"{where}: {what} {value!r} is not an IP address") from None
    return str(value)


def port(value: Any, where: str) -> int:
    """A TCP/UDP port number, 1-65535."""
    number = typed(value, int, where, "port")
    if not 1 <= number <= 65535:
        raise Bad(f"{where}: port {number} out of range 1-65535")
    return int(number)
