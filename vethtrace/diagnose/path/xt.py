"""iptables-nft's xt matches, evaluated from the arguments iptables-nft-save
printed for them (topology/xtsave.py puts them on the expression as "args").

Each extension is judged the way its kernel module does for the packet the
walk carries: comment is always true; conntrack/state compare the flow's
state (new for a first packet, established for its reply: the walk follows
one connection, so RELATED/INVALID/UNTRACKED never hold); addrtype asks the
namespace's local table (LOCAL, BROADCAST, MULTICAST, else UNICAST);
multiport compares port lists and ranges; mark compares the packet's mark
(the walk never sets one: 0); physdev knows whether the packet is being
bridged (br_netfilter). An option we do not know, or a match without
arguments (the save tool was missing), raises Unknown: the rule shows as
unknown, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vethtrace.diagnose.path.nft import Ctx as _Ctx


def match(xt: dict[str, Any], ctx: _Ctx, unknown: type[Exception]) -> bool:
    name = xt.get("name", "")
    args = xt.get("args")
    if args is None:
        raise unknown(f"xt match {name} (its arguments are unknown: iptables-nft-save gave none)")
    judge = _MATCHES.get(name)
    if judge is None:
        raise unknown(f"xt match {name} {' '.join(args)}".strip())
    opts = _options(args)
    try:
        return all(judge(opt, value, ctx) != neg for opt, value, neg in opts)
    except _NotModelled as exc:
        raise unknown(f"-m {name} {' '.join(args)}: {exc}") from None


class _NotModelled(Exception):
    pass


def _options(args: list[str]) -> list[tuple[str, str | None, bool]]:
    """["!", "--ctstate", "NEW"] -> [("--ctstate", "NEW", True)]; flag options get None."""
    out: list[tuple[str, str | None, bool]] = []
    neg = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "!":
            neg = True
        elif a.startswith("--"):
            value = None
            if i + 1 < len(args) and not args[i + 1].startswith("--") and args[i + 1] != "!":
                value = args[i + 1]
                i += 1
            out.append((a, value, neg))
            neg = False
        i += 1
    return out


def _comment(opt: str, value: str | None, ctx: _Ctx) -> bool:
    return True


def _ctstate(opt: str, value: str | None, ctx: _Ctx) -> bool:
    if opt not in ("--ctstate", "--state"):
        raise _NotModelled(f"{opt} is not modelled")
    states = {s.upper() for s in (value or "").split(",")}
    return ctx.ct_state.upper() in states  # NEW, ESTABLISHED or INVALID (no entry yet)


def _addrtype(opt: str, value: str | None, ctx: _Ctx) -> bool:
    if opt in ("--limit-iface-in", "--limit-iface-out"):
        raise _NotModelled(f"{opt} is not modelled")
    if opt not in ("--src-type", "--dst-type"):
        raise _NotModelled(f"{opt} is not modelled")
    addr = ctx.src if opt == "--src-type" else ctx.dst
    if ctx.addrtype is None:
        raise _NotModelled("the namespace's address types are not known here")
    kind = "MULTICAST" if ip_address(addr).is_multicast else ctx.addrtype(addr)
    return kind in {t.upper() for t in (value or "").split(",")}


def _ports(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        out.append((int(lo), int(hi or lo)))
    return out


def _multiport(opt: str, value: str | None, ctx: _Ctx) -> bool:
    if ctx.proto not in ("tcp", "udp"):
        return False
    wanted = _ports(value or "")
    hit = {
        "--dports": [ctx.dport],
        "--destination-ports": [ctx.dport],
        "--sports": [ctx.sport],
        "--source-ports": [ctx.sport],
        "--ports": [ctx.sport, ctx.dport],
    }.get(opt)
    if hit is None:
        raise _NotModelled(f"{opt} is not modelled")
    return any(p is not None and lo <= p <= hi for p in hit for lo, hi in wanted)


def _mark(opt: str, value: str | None, ctx: _Ctx) -> bool:
    if opt != "--mark" or value is None:
        raise _NotModelled(f"{opt} is not modelled")
    want, _, mask = value.partition("/")
    return (0 & int(mask or "0xffffffff", 0)) == int(want, 0)


def _physdev(opt: str, value: str | None, ctx: _Ctx) -> bool:
    if opt in ("--physdev-is-bridged", "--physdev-is-in", "--physdev-is-out"):
        return ctx.bridged
    raise _NotModelled(f"{opt} (which bridge port) is not modelled")


def _proto_port(opt: str, value: str | None, ctx: _Ctx) -> bool:
    """-m tcp/-m udp leftovers nft could not express natively."""
    if opt in ("--dport", "--destination-port", "--sport", "--source-port") and value:
        port = ctx.dport if "d" in opt[2:4] else ctx.sport
        lo, _, hi = value.partition(":")
        return port is not None and int(lo) <= port <= int(hi or lo)
    raise _NotModelled(f"{opt} is not modelled")


_MATCHES: dict[str, Callable[[str, str | None, _Ctx], bool]] = {
    "comment": _comment,
    "conntrack": _ctstate,
    "state": _ctstate,
    "addrtype": _addrtype,
    "multiport": _multiport,
    "mark": _mark,
    "physdev": _physdev,
    "tcp": _proto_port,
    "udp": _proto_port,
}


def text(xt: dict[str, Any]) -> str:
    """The match as iptables would print it."""
    args = xt.get("args")
    if xt.get("type") == "match":
        return f"-m {xt.get('name')}" + (f" {' '.join(args)}" if args else "")
    return f"-j {xt.get('name')}"
