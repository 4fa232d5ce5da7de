"""Path prediction on constructed topologies: one decision kind per test."""

from __future__ import annotations

from vethtrace.diagnose.path import Flow, predict
from vethtrace.diagnose.path.nft import Ctx, Ruleset, evaluate
from vethtrace.diagnose.path.route import lookup
from vethtrace.model import (
    Address,
    IfaceKey,
    Interface,
    Namespace,
    Neighbour,
    Route,
    Rule,
    Topology,
)


def iface(
    ns: int,
    idx: int,
    name: str,
    addr: str | None = None,
    peer: tuple[int, int] | None = None,
    mac: str | None = None,
) -> Interface:
    i = Interface(
        IfaceKey(ns, idx),
        name,
        "veth",
        True,
        "UP",
        True,
        1500,
        mac or f"02:00:00:00:{ns % 256:02x}:{idx:02x}",
        peer=IfaceKey(*peer) if peer else None,
    )
    if addr:
        a, plen = addr.split("/")
        i.addresses.append(Address(a, int(plen)))
    return i


def two(route_b: bool = True, rp_filter: str = "0") -> Topology:
    """a (10.1.0.2) -- r (10.1.0.1 | 10.2.0.1, forwarding) -- b (10.2.0.2)."""
    a = Namespace(1, "a", interfaces=[iface(1, 2, "eth0", "10.1.0.2/24", (3, 2))])
    b = Namespace(2, "b", interfaces=[iface(2, 2, "eth0", "10.2.0.2/24", (3, 3))])
    r = Namespace(
        3,
        "r",
        interfaces=[
            iface(3, 2, "ra", "10.1.0.1/24", (1, 2)),
            iface(3, 3, "rb", "10.2.0.1/24", (2, 2)),
        ],
        sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": rp_filter},
    )
    for i in r.interfaces:
        i.sysctls = {"forwarding": "1"}
    a.routes = [Route("10.1.0.0/24", 2, scope="link"), Route("default", 2, "10.1.0.1")]
    b.routes = [Route("10.2.0.0/24", 2, scope="link")]
    if route_b:
        b.routes.append(Route("default", 2, "10.2.0.1"))
    r.routes = [Route("10.1.0.0/24", 2, scope="link"), Route("10.2.0.0/24", 3, scope="link")]
    return Topology([a, b, r])


def test_routed_ping_both_ways() -> None:
    pred = predict(two(), Flow("a", "10.2.0.2"))
    assert pred.ok, pred.to_dict()
    assert pred.delivered_to == "b/eth0"
    assert any(h.step == "forward" and h.netns == "r" for h in pred.forward)


def test_missing_route_back_fails_in_the_reply() -> None:
    pred = predict(two(route_b=False), Flow("a", "10.2.0.2"))
    assert pred.forward_outcome == "delivered" and pred.reply_outcome == "failed"
    fail = pred.first_failure
    assert fail is not None and fail.netns == "b" and fail.step == "route"
    assert any("default via 10.2.0.1" in f for f in fail.fix)


def test_forwarding_off() -> None:
    topo = two()
    r = topo.netns_by_name("r")
    assert r is not None
    r.interfaces[0].sysctls["forwarding"] = "0"
    fail = predict(topo, Flow("a", "10.2.0.2")).first_failure
    assert fail is not None and fail.step == "forward" and "forwarding" in fail.source


def test_rp_filter_strict_with_asymmetric_route() -> None:
    topo = two(rp_filter="1")
    r = topo.netns_by_name("r")
    assert r is not None
    r.routes[0] = Route("10.1.0.0/24", 3, "10.2.0.2")  # the way back leaves via rb
    # r's ARP answer for 10.1.0.1 is refused first: arp_process routes the
    # request as input, and the same reverse path check drops it
    fail = predict(topo, Flow("a", "10.2.0.2")).first_failure
    assert fail is not None and fail.step == "arp" and "rp_filter" in fail.source
    a = topo.netns_by_name("a")
    assert a is not None
    ra_mac = r.interfaces[0].mac
    a.neighbours = [Neighbour(2, "10.1.0.1", ra_mac, "PERMANENT")]  # a knows r's MAC
    fail = predict(topo, Flow("a", "10.2.0.2")).first_failure
    assert fail is not None and fail.step == "rp_filter" and fail.netns == "r"


def test_policy_rule_picks_another_table() -> None:
    ns = Namespace(
        1, "x", interfaces=[iface(1, 2, "eth0", "10.0.0.1/24"), iface(1, 3, "eth1", "10.9.0.1/24")]
    )
    ns.routes = [Route("default", 2, "10.0.0.254")]
    ns.other_routes = [Route("default", 3, "10.9.0.254", table=100)]
    ns.rules = [Rule(0, table=255), Rule(100, table=100, src="10.9.0.0/24"), Rule(32766, table=254)]
    assert lookup(ns, "8.8.8.8").gateway == "10.0.0.254"
    hit = lookup(ns, "8.8.8.8", src="10.9.0.1")
    assert hit.gateway == "10.9.0.254" and hit.table == 100
    ns.rules.insert(1, Rule(50, action="unreachable", dst="8.8.0.0/16"))
    assert lookup(ns, "8.8.8.8").kind == "unreachable"
    assert lookup(ns, "10.0.0.1").kind == "local"


def test_arp_ignore_keeps_owner_silent() -> None:
    topo = two()
    b = topo.netns_by_name("b")
    assert b is not None
    b.sysctls["net.ipv4.conf.all.arp_ignore"] = "8"
    fail = predict(topo, Flow("a", "10.2.0.2")).first_failure
    assert fail is not None and "arp_ignore" in fail.source and fail.netns == "b"


def _rules(*items: dict) -> Ruleset:
    return Ruleset.parse(list(items))


def _ctx(**kw: object) -> Ctx:
    base = dict(
        family=4,
        src="10.0.0.1",
        dst="10.0.0.2",
        proto="tcp",
        sport=40000,
        dport=22,
        iif="veth1",
        oif="eth0",
        ct_state="new",
        reply=False,
    )
    base.update(kw)
    return Ctx(**base)  # type: ignore[arg-type]


CHAIN = {
    "chain": {
        "family": "inet",
        "table": "t",
        "name": "fwd",
        "hook": "forward",
        "prio": 0,
        "type": "filter",
        "policy": "drop",
    }
}
SUB = {"chain": {"family": "inet", "table": "t", "name": "sub"}}


def rule(chain: str, handle: int, *expr: dict) -> dict:
    return {
        "rule": {
            "family": "inet",
            "table": "t",
            "chain": chain,
            "handle": handle,
            "expr": list(expr),
        }
    }


def m(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}


def test_nft_jump_set_and_return() -> None:
    rs = _rules(
        CHAIN,
        SUB,
        {
            "set": {
                "family": "inet",
                "table": "t",
                "name": "ok",
                "type": "ipv4_addr",
                "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}],
            }
        },
        rule("fwd", 1, m({"meta": {"key": "iifname"}}, "veth*"), {"jump": {"target": "sub"}}),
        rule("sub", 2, m(SADDR, "@ok"), m(DPORT, {"set": [22, 80]}), {"accept": None}),
        rule("sub", 3, {"return": None}),
    )
    assert evaluate(rs, ("ip", "inet"), "forward", _ctx()).verdict == "accept"
    res = evaluate(rs, ("ip", "inet"), "forward", _ctx(dport=443))
    assert res.verdict == "drop" and res.steps[-1].source.endswith("policy drop")
    assert evaluate(rs, ("ip", "inet"), "forward", _ctx(iif="eth9")).verdict == "drop"


def test_nft_vmap_ct_state_and_unknown() -> None:
    rs = _rules(
        CHAIN,
        rule("fwd", 1, {"fib": {"flags": ["daddr"], "result": "type"}}, {"drop": None}),
        rule(
            "fwd",
            2,
            m({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None},
        ),
        rule(
            "fwd",
            3,
            {
                "vmap": {
                    "key": {"meta": {"key": "l4proto"}},
                    "data": {"set": [["udp", {"accept": None}]]},
                }
            },
        ),
    )
    res = evaluate(rs, ("ip", "inet"), "forward", _ctx())
    assert (
        res.verdict == "drop"
        and res.steps[0].status == "unknown"
        and "fib" in res.steps[0].decision
    )
    assert evaluate(rs, ("ip", "inet"), "forward", _ctx(proto="udp")).verdict == "accept"
    assert (
        evaluate(rs, ("ip", "inet"), "forward", _ctx(ct_state="established", reply=True)).verdict
        == "accept"
    )


def test_nft_masquerade_only_for_new_flows() -> None:
    nat = {
        "chain": {
            "family": "ip",
            "table": "nat",
            "name": "post",
            "hook": "postrouting",
            "prio": 100,
            "type": "nat",
            "policy": "accept",
        }
    }
    rs = _rules(
        nat,
        {
            "rule": {
                "family": "ip",
                "table": "nat",
                "chain": "post",
                "handle": 4,
                "expr": [
                    m(SADDR, {"prefix": {"addr": "10.0.0.0", "len": 8}}),
                    {"xt": {"type": "target", "name": "MASQUERADE"}},
                ],
            }
        },
    )
    assert evaluate(rs, ("ip", "inet"), "postrouting", _ctx()).nat == ("masquerade", None, None)
    assert evaluate(rs, ("ip", "inet"), "postrouting", _ctx(ct_state="established")).nat is None


def test_reply_after_masquerade_returns_through_conntrack() -> None:
    topo = two(route_b=False)  # b cannot route to a's subnet: only masquerading in r helps
    r = topo.netns_by_name("r")
    assert r is not None
    r.nft = [
        {
            "chain": {
                "family": "ip",
                "table": "nat",
                "name": "post",
                "hook": "postrouting",
                "prio": 100,
                "type": "nat",
                "policy": "accept",
            }
        },
        {
            "rule": {
                "family": "ip",
                "table": "nat",
                "chain": "post",
                "handle": 2,
                "expr": [m({"meta": {"key": "oifname"}}, "rb"), {"masquerade": None}],
            }
        },
    ]
    pred = predict(topo, Flow("a", "10.2.0.2"))
    assert pred.ok, [h.decision for h in pred.forward + pred.reply]
    assert any(h.step == "nat" and "10.2.0.1" in h.decision for h in pred.forward)
    assert any(h.step == "nat" and "conntrack" in h.decision for h in pred.reply)


def test_tcp_needs_a_listener() -> None:
    from vethtrace.model import Socket

    topo = two()
    fail = predict(topo, Flow("a", "10.2.0.2", "tcp", 80)).first_failure
    assert fail is not None and fail.step == "socket"
    b = topo.netns_by_name("b")
    assert b is not None
    b.sockets.append(Socket("tcp", 4, "0.0.0.0", 80))
    assert predict(topo, Flow("a", "10.2.0.2", "tcp", 80)).ok


def test_rule_goto_lands_on_its_exact_priority_or_is_skipped() -> None:
    """fib_rules_lookup: goto jumps to the rule of exactly that priority; an
    unresolved goto (no such rule) is skipped, and a backward one cannot loop."""
    topo = two()
    a = topo.namespaces[0]
    a.other_routes = [Route("10.2.0.2/32", None, kind="blackhole", table=100)]
    base = [Rule(0, table=255), Rule(32766, table=254)]
    a.rules = [*base, Rule(100, action="goto", goto=200), Rule(150, table=100)]
    assert lookup(a, "10.2.0.2").kind == "blackhole"  # unresolved: rule 150 decides
    a.rules = [
        *base,
        Rule(100, action="goto", goto=200),
        Rule(150, table=100),
        Rule(200, table=254),
    ]
    assert lookup(a, "10.2.0.2").kind == "unicast"  # resolved: 150 is jumped over
    a.rules = [*base, Rule(100, table=100), Rule(120, action="goto", goto=100)]
    assert lookup(a, "10.9.9.9").kind == "unicast"  # backward: skipped, main answers
