"""The ping verdict on REAL recordings (samples/events/ping-<lab>.jsonl).

Each recording was made with `vethtrace ping --write` on the lab of the same
name (namespace prefix "vtrec-"), on the main ping of the scenario (its first
failing [[expect.ping]], else its first). The verdict is recomputed here from
the recorded events and topology alone — the same path `report` takes — and
checked against the scenario's own [expect], not against what was recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vethtrace.diagnose.verdict import PingPlan, decide
from vethtrace.diagnose.verdict.model import compare
from vethtrace.lab import load
from vethtrace.model import ProbeEvent, from_dict
from vethtrace.record import read
from vethtrace.render.ping import PingReport, to_json

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "events"
PREFIX = "vtrec-"
LABS = sorted(p.stem.removeprefix("ping-") for p in SAMPLES.glob("ping-*.jsonl"))
# Where the kernel tells more than the scenario states (same culprit, sharper verdict):
# with ip_forward=0 the router frees the echo with reason IP_INADDRERRORS, so ping
# says "dropped" (at r/r-a, the scenario's culprit) rather than "no-reply".
VERDICT_OVERRIDES = {"check-no-forwarding": "dropped"}


def replay(name: str):
    """The verdict as `report` rebuilds it: decided from the events, then set beside
    the path model's prediction from the recorded tables (compare)."""
    rec = read(SAMPLES / f"ping-{name}.jsonl")
    plan = from_dict(PingPlan, rec.header["ping"]["plan"])
    assert rec.topology is not None
    verdict = decide(plan, rec.events, rec.topology, rec.findings, final=True)
    verdict = compare(verdict, plan, rec.topology).verdict
    return rec, plan, verdict


def test_every_lab_with_pings_has_a_recording() -> None:
    assert {"seed", "seed-fixed", "veth-peer-down", "mtu-mismatch"} <= set(LABS)


@pytest.mark.parametrize("name", LABS)
def test_recomputed_verdict_matches_the_lab(name: str) -> None:
    expect = load(name).expect
    _rec, _plan, v = replay(name)
    assert v is not None
    main = next((p for p in expect.pings if not p.ok), expect.pings[0])
    assert v.reachable == main.ok
    if not expect.verdict:
        return  # a static-check scenario (e.g. duplicate IP): no ping verdict stated
    assert v.kind == VERDICT_OVERRIDES.get(name, expect.verdict), v.summary
    if expect.culprit is not None:
        assert expect.culprit.matches(PREFIX, v.culprit_netns, v.culprit_interface), v.summary
    assert v.summary and (v.kind == "delivered" or v.explanation)


def test_seed_explains_what_confuses_people() -> None:
    _rec, _plan, v = replay("seed")
    assert v.kind == "diverted"
    assert "tcpdump on veth0 shows the ARP reply" in v.explanation
    assert "port of br0" in v.explanation
    assert any("dev br0" in cmd and "addr add" in cmd for cmd in v.fix)
    states = [t["state"] for t in v.timeline if t["interface"] == "veth0"]
    assert "INCOMPLETE" in states and "REACHABLE" not in states


def test_drop_reasons_in_plain_words() -> None:
    _r, _p, v = replay("veth-peer-down")
    assert "is down" in v.summary and v.fix == ["ip -n vtrec-peer link set veth1 up"]
    _r, _p, v = replay("mtu-mismatch")
    assert "MTU" in v.summary and "mtu 1000" in v.summary


def test_overlay_culprits_follow_the_kernel() -> None:
    """A bridge-family nft drop: the event stands at the egress port (veth-b), the
    hook's input device is the port the frame came in by. An encapsulated packet
    sent where no VTEP is, and a packet over vxlan0's MTU: the model names vxlan0."""
    _r, _p, v = replay("overlay-port-filtered")
    assert "veth-b" in v.summary and v.culprit_interface == "veth-a"
    assert not any("bridge-nf-call-iptables" in c for c in v.fix), v.fix
    _r, _p, v = replay("overlay-neigh-missing")
    assert v.summary.startswith("ARP who-has") and "neighbour entry for the remote" in v.summary
    _r, _p, v = replay("overlay-fdb-wrong")
    assert "where no VTEP is" in v.summary
    assert any("fdb append" in c and "dst 10.100.0.2" in c for c in v.fix), v.fix
    _r, _p, v = replay("overlay-mtu")
    assert "over vxlan0's MTU 1450" in v.summary and any("mtu 1550" in c for c in v.fix)


def test_benign_no_socket_drop_does_not_spoil_delivered() -> None:
    rec, _plan, v = replay("seed-fixed")
    assert any(e.drop_reason == "NO_SOCKET" for e in rec.events), "recording lacks the case"
    assert v.kind == "delivered"


def test_live_decision_waits_for_certainty() -> None:
    """With only the events up to the ARP reply's arrival, the seed is not yet certain."""
    rec, plan, _v = replay("seed")
    events: list[ProbeEvent] = sorted(rec.events, key=lambda e: e.ts_ns)
    reply_at = next(
        e.ts_ns for e in events if e.packet and e.packet.arp_op == 2 and e.ifname == "veth0"
    )
    early = [e for e in events if e.ts_ns <= reply_at]
    assert decide(plan, early, rec.topology, final=False, now_ns=reply_at) is None
    later = decide(plan, events, rec.topology, final=False, now_ns=reply_at + 100_000_000)
    assert later is not None and later.kind == "diverted"


def test_json_shape_from_a_recording() -> None:
    rec, plan, v = replay("seed")
    obj = to_json(PingReport(plan, v, rec.events, rec.topology, rec.findings))
    assert set(obj) >= {"reachable", "verdict", "summary", "culprit", "path", "findings"}
    assert obj["reachable"] is False and obj["verdict"] == "diverted"
    assert obj["culprit"] == {"netns": "vtrec-host", "interface": "veth0"}
    for hop in obj["path"]:
        assert set(hop) >= {"netns", "interface", "point", "packet", "time"}
    assert any(h["interface"] == "br0" and not h["ok"] for h in obj["path"])


def test_diversion_on_the_target_side() -> None:
    """seed, pinged the other way (song -> 192.168.122.101 on veth0): the echo arrives
    (via br0's stack), but host's ARP for the reply's next hop goes out of veth0 and
    its answer is taken by br0 in turn: the culprit is the same port, on the target side.
    Recorded with `vethtrace ping --from vtxf-song vtxf-host 192.168.122.101 -c 2 --write`."""
    rec = read(SAMPLES / "extra-seed-reverse.jsonl")
    plan = from_dict(PingPlan, rec.header["ping"]["plan"])
    assert rec.topology is not None
    v = decide(plan, rec.events, rec.topology, rec.findings, final=True)
    assert v is not None and v.kind == "diverted"
    assert (v.culprit_netns, v.culprit_interface) == ("vtxf-host", "veth0")
    assert "echo replies to 192.168.122.102 wait in its queue" in v.explanation
    assert [t["state"] for t in v.timeline] == ["INCOMPLETE", "FAILED"]
