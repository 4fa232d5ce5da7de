"""Overlay labs (several nodes on one machine): the vxlan devices and FDB entries
the scenario declares are what the kernel holds (read with iproute2, not our
code), and discovery reads them back (VNI, port, local address, underlay device,
learning, each FDB entry's remote VTEP). The stated pings of every overlay lab
run in test_lab.py's generic test."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.labs import lab_fixture
from vethtrace.topology import discover

pytestmark = pytest.mark.privileged

overlay = lab_fixture("overlay-vxlan")


def _json(*args: str) -> list[dict]:
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_vxlan_devices_and_fdb_as_declared(overlay) -> None:
    for node, local, remote, mac in (
        ("node-a", "10.100.0.1", "10.100.0.2", "02:00:00:0f:00:02"),
        ("node-b", "10.100.0.2", "10.100.0.1", "02:00:00:0f:00:01"),
    ):
        ns = overlay.ns(node)
        link = _json("ip", "-d", "-j", "-n", ns, "link", "show", "vxlan0")[0]
        data = link["linkinfo"]["info_data"]
        assert link["linkinfo"]["info_kind"] == "vxlan" and link["mtu"] == 1450
        assert data["id"] == 1 and data["local"] == local and data["port"] == 4789
        assert data["link"] == "eth0" and data["learning"] is False
        fdb = _json("bridge", "-j", "-n", ns, "fdb", "show", "dev", "vxlan0")
        assert [(e["mac"], e.get("dst")) for e in fdb if e.get("dst")] == [(mac, remote)]


def test_discovery_reads_vxlan_and_remote_vteps(overlay) -> None:
    topo = discover(overlay.namespaces)
    ns = topo.netns_by_name(overlay.ns("node-a"))
    assert ns is not None
    vx = ns.iface_by_name("vxlan0")
    eth0 = ns.iface_by_name("eth0")
    assert vx is not None and vx.vxlan is not None and eth0 is not None
    assert (vx.vxlan.vni, vx.vxlan.port, vx.vxlan.local) == (1, 4789, "10.100.0.1")
    assert vx.vxlan.link == eth0.key.ifindex and vx.vxlan.learning is False
    remote = [(e.mac, e.dst) for e in ns.fdb if e.ifindex == vx.key.ifindex and e.dst]
    assert remote == [("02:00:00:0f:00:02", "10.100.0.2")]
    assert all(e.dst is None for e in ns.fdb if e.ifindex != vx.key.ifindex)
