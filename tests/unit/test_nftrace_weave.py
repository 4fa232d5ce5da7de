"""Rule verdicts placed in a ping's packet paths (render/nftrace.weave) and the
predicted rule read from the path model's failing decision
(diagnose/nftrace.predicted_rule): pure logic on hand-made data."""

from __future__ import annotations

from vethtrace.diagnose.nftrace import predicted_rule
from vethtrace.model import Hop, NftraceEvent, PacketSummary
from vethtrace.render.nftrace import POINT, weave

ECHO = PacketSummary(ip_src="10.0.0.1", ip_dst="10.0.0.2", ip_proto=1, icmp_type=8,
                     icmp_id=7, icmp_seq=1)  # fmt: skip
NAMES = {1: "a", 2: "sw", 3: "b"}


def _hop(ns: str, dev: str, note: str, t: int) -> Hop:
    return Hop(ns, dev, "dev", ECHO.describe(), t, note=note)


def _ev(ns: int, hook: str, chain: str, verdict: str, t: int, iif=None, oif=None, handle=1):
    return NftraceEvent(t, ns, "inet", "f", chain, "rule", verdict, handle=handle, hook=hook,
                        iif=iif, oif=oif, rule=f"{verdict} it", packet=ECHO)  # fmt: skip


def test_verdicts_go_where_their_hooks_fired_in_time_order() -> None:
    hops = [
        _hop("a", "eth0", "sent", 10),
        _hop("sw", "veth-a", "received", 11),
        _hop("sw", "veth-b", "sent", 12),
        _hop("b", "eth0", "received", 13),
        _hop("b", "eth0", "dropped: NETFILTER_DROP", 14),
    ]
    events = [  # read in this order (the kernel's has no time of its own)
        _ev(1, "output", "out", "accept", 100, oif="eth0"),
        _ev(2, "forward", "fwd", "accept", 101, iif="veth-a", oif="veth-b"),
        _ev(3, "prerouting", "pre", "accept", 102, iif="eth0"),
        _ev(3, "input", "in", "drop", 103, iif="eth0", handle=9),
        _ev(3, "input", "in", "drop", 104, iif="eth0", handle=None),  # chain end: not shown
    ]
    [(title, got)], left = weave([(ECHO.describe(), hops)], events, "10.0.0.2", NAMES.get)
    assert left == [] and title == ECHO.describe()
    rows = [(h.netns, h.point == POINT, h.note.split(" (")[0]) for h in got]
    assert rows == [
        ("a", True, "nftables inet f out handle 1"),
        ("a", False, "sent"),
        ("sw", False, "received"),
        ("sw", True, "nftables inet f fwd handle 1"),
        ("sw", False, "sent"),
        ("b", False, "received"),
        ("b", True, "nftables inet f pre handle 1"),
        ("b", True, "nftables inet f in handle 9"),
        ("b", False, "dropped: NETFILTER_DROP"),
    ]
    assert [h.ok for h in got if h.point == POINT] == [True, True, True, False]


def test_a_verdict_of_no_shown_packet_is_left_over_and_others_ignored() -> None:
    other = PacketSummary(ip_src="10.0.0.1", ip_dst="10.0.0.2", ip_proto=1, icmp_type=8,
                          icmp_id=7, icmp_seq=2)  # fmt: skip
    ev = _ev(3, "input", "in", "drop", 1, iif="eth0")
    ev.packet = other
    stranger = _ev(3, "input", "in", "drop", 2, iif="eth0")
    stranger.packet = PacketSummary(ip_src="10.9.9.9", ip_dst="10.9.9.8", ip_proto=1)
    groups = [(ECHO.describe(), [_hop("b", "eth0", "received", 1)])]
    out, left = weave(groups, [ev, stranger], "10.0.0.2", NAMES.get)
    assert left == [ev] and out == groups


def test_predicted_rule_from_the_models_failing_nft_decision() -> None:
    pred = {"first_failure": {
        "netns": "b", "interface": "eth0", "step": "nft",
        "decision": "input: drop  [icmp type echo-request drop]",
        "source": "nft inet f input handle 4", "status": "fail",
        "fix": ["ip netns exec b nft delete rule inet f input handle 4"],
    }}  # fmt: skip
    rule = predicted_rule(pred)
    assert rule is not None
    assert (rule["netns"], rule["family"], rule["table"], rule["chain"], rule["handle"]) == (
        "b", "inet", "f", "input", 4)
    assert rule["hook"] == "input" and rule["rule"] == "icmp type echo-request drop"
    assert rule["source"] == "predicted" and rule["confirmed"] is False
    pred["first_failure"].update(source="nft ip filter FORWARD policy drop",
                                 decision="br_netfilter forward: policy drop")  # fmt: skip
    rule = predicted_rule(pred)
    assert rule is not None and rule["kind"] == "policy" and rule["verdict"] == "policy drop"
    assert rule["hook"] == "forward" and rule["handle"] is None
    pred["first_failure"]["step"] = "route"
    assert predicted_rule(pred) is None and predicted_rule(None) is None
