"""Checking a lab scenario's [expect] table: the pings and TCP connections that
must (or must not) work, and for a broken scenario the verdict, culprit, reason
and the `vethtrace check` rules that should fire.

Split from parse.py (what a scenario builds) because this is what the scenario
promises; the references it makes (namespaces, culprit interfaces, target
addresses) are checked against parse.py's _Declared.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vethtrace.lab import tomlcheck as tc
from vethtrace.lab.scenario import VERDICTS, Culprit, Expect, PingExpect, TcpExpect

if TYPE_CHECKING:
    from vethtrace.lab.parse import _Declared


def expect(t: Any, declared: _Declared) -> Expect:
    t = tc.keys(t, "[expect]", set(), {"ping", "tcp", "verdict", "culprit", "reason", "rules"})
    expect = Expect()
    pings = t.get("ping", [])
    if not isinstance(pings, list):
        raise tc.Bad("[[expect.ping]] must be an array of tables")
    for i, p in enumerate(pings, 1):
        where = f"[[expect.ping]] #{i}"
        p = tc.keys(p, where, {"from", "netns", "to", "ok"}, {"size"})
        declared.check_ns(p["from"], f"{where} from", containers=True)
        declared.check_ns(p["netns"], where, containers=True)
        ping = PingExpect(
            source=p["from"],
            netns=p["netns"],
            to=tc.ip(p["to"], where, "to"),
            ok=tc.typed(p["ok"], bool, where, "ok"),
        )
        if "size" in p:
            ping.size = tc.typed(p["size"], int, where, "size")
        expect.pings.append(ping)
    tcps = t.get("tcp", [])
    if not isinstance(tcps, list):
        raise tc.Bad("[[expect.tcp]] must be an array of tables")
    for i, p in enumerate(tcps, 1):
        where = f"[[expect.tcp]] #{i}"
        p = tc.keys(p, where, {"from", "netns", "to", "port", "ok"}, set())
        declared.check_ns(p["from"], f"{where} from", containers=True)
        declared.check_ns(p["netns"], where, containers=True)
        to, port = tc.ip(p["to"], where, "to"), tc.port(p["port"], where)
        ok = tc.typed(p["ok"], bool, where, "ok")
        expect.tcp.append(TcpExpect(source=p["from"], netns=p["netns"], to=to, port=port, ok=ok))
    if "verdict" in t:
        if t["verdict"] not in VERDICTS:
            raise tc.Bad(f"[expect]: verdict {t['verdict']!r} is not one of {', '.join(VERDICTS)}")
        expect.verdict = t["verdict"]
    if "culprit" in t:
        c = tc.keys(t["culprit"], "[expect] culprit", {"netns"}, {"interface"})
        declared.check_ns(c["netns"], "[expect] culprit", containers=True)
        iface = c.get("interface")
        if iface is not None and iface != "lo" and not declared.named(c["netns"], iface):
            raise tc.Bad(
                f"[expect] culprit: interface {iface!r} is not a link in netns {c['netns']!r}"
            )
        expect.culprit = Culprit(netns=c["netns"], interface=iface)
    if "reason" in t:
        expect.reason = tc.typed(t["reason"], str, "[expect]", "reason")
    rules = tc.typed(t.get("rules", []), list, "[expect]", "rules")
    for r in rules:
        if not isinstance(r, str) or not re.match(r"^[a-z0-9]+(-[a-z0-9]+)*$", r):
            raise tc.Bad(f"[expect]: rule id {r!r} must be kebab-case")
    expect.rules = list(rules)
    if expect.verdict not in (None, "delivered") and (
        expect.culprit is None or expect.reason is None
    ):
        raise tc.Bad("[expect]: a broken scenario (verdict) needs culprit and reason")
    return expect
