"""`ping --agents` on broken overlay labs (#19): one agent per simulated node, as in
test_agent.py, and the assembled verdict names the culprit on the node where the
kernel's decision lost the packet, not on the node that sent it nor where it was
last seen. Real agents, real HTTP, real probes.

overlay-vni-mismatch: node-a encapsulates with VNI 1, node-b's vxlan0 has VNI 2:
the culprit is node-b's vxlan0 (the far node). overlay-fdb-wrong: node-a's FDB
sends node-b's VTEP MAC to an underlay address no node holds: the culprit is
node-a's vxlan0 (the near node), and node-b's probes never see the echo."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.labs import built_lab
from tests.privileged.test_agent import Agents, finish, ping_agents, running_agents

pytestmark = pytest.mark.privileged

# lab -> (the node, the lab namespace, the interface) the verdict must name
BROKEN = {
    "overlay-vni-mismatch": ("node-b", "node-b", "vxlan0"),
    "overlay-fdb-wrong": ("node-a", "node-a", "vxlan0"),
}


@pytest.fixture(scope="module", params=sorted(BROKEN))
def broken(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Agents]]:  # fmt: skip
    with built_lab(request.param) as lab, running_agents(lab, tmp_path_factory.mktemp("a")) as a:
        yield request.param, a


def test_the_assembled_verdict_names_the_culprit_on_its_node(broken) -> None:
    name, agents = broken
    code, doc, err = finish(ping_agents(agents, "-c", "2", "--timeout", "3"))
    v, lab = doc["verdict"], agents.lab
    node, netns, iface = BROKEN[name]
    assert code == 1 and doc["reachable"] is False, (name, v, err)
    assert doc["ping"]["sent"] >= 1 and doc["ping"]["replies"] == 0, doc["ping"]
    assert doc["unasked"] == [], doc["unasked"]
    # merged names are NODE/NETNS: the node is part of the culprit's name
    assert v["culprit_netns"] == f"{node}/{lab.ns(netns)}", (name, v)
    assert v["culprit_interface"] == iface, (name, v)
    assert f"on {node} ({lab.ns(netns)}/{iface})" in v["summary"], v["summary"]
    assert v["fix"] and all(lab.prefix in c for c in v["fix"]), v["fix"]
    asked = {n["node"]: n for n in doc["nodes"]}
    assert asked["node-a"]["events"] > 0  # the source node's probes saw the echo leave
