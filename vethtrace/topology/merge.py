"""Several nodes' topologies (one per agent) as one Topology the path model can walk.

Each node's discovery is a Topology of its own machine, and namespace inodes
are only unique on one kernel: two nodes can both have a namespace 4026531840.
So every namespace of node number i gets the inode `(i + 1) << 32 | inode`
(an inode is 32 bits) and the name `node/name`; every IfaceKey inside (veth
peers, macvlan lowers) moves with it, and so do the node's probe events
(`event_inode`).

The network between the nodes is nobody's namespace: no agent sees a switch.
An interface that leads out of its node (a physical device, or a veth whose
peer is in no served namespace) and holds an address in a subnet that
another node's such interface shares is joined to it through one assumed
segment, the namespace NETWORK with a bridge per subnet. That is the only
thing made up here, and it is what a ping across nodes already assumes (the
nodes reach each other); hops across it say `network/...`, so a verdict
never claims to have seen inside it.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass

from vethtrace.model import BridgePortInfo, IfaceKey, Interface, Namespace, Topology

NETWORK = "network"  # the assumed segment between the nodes' uplinks
NETWORK_INODE = 1 << 48  # above every node's range
SEP = "/"


@dataclass
class NodeTopology:
    node: str  # the node's label (the agent's --node)
    topo: Topology


def offset(index: int) -> int:
    return (index + 1) << 32


def event_inode(index: int, inode: int) -> int:
    """A probe event's namespace inode on node `index`, in the merged numbering."""
    return offset(index) | inode if inode else 0


def node_of(name: str) -> str:
    """The node of a merged namespace name ('' for the assumed network)."""
    return name.split(SEP, 1)[0] if SEP in name else ""


def local_name(name: str) -> str:
    """The name the node itself uses for a merged namespace name."""
    return name.split(SEP, 1)[1] if SEP in name else name


def merge(nodes: list[NodeTopology]) -> Topology:
    """One Topology of every node's namespaces (copies: the inputs are left alone)."""
    out = Topology(kernel=", ".join(sorted({n.topo.kernel for n in nodes if n.topo.kernel})))
    for i, n in enumerate(nodes):
        base = offset(i)
        for ns in n.topo.namespaces:
            c = copy.deepcopy(ns)
            c.inode = base | ns.inode
            c.name = f"{n.node}{SEP}{ns.name}"
            c.named = True  # commands name it by its merged name, rewritten for people
            for it in c.interfaces:
                it.key = IfaceKey(c.inode, it.key.ifindex)
                if it.peer is not None:
                    it.peer = IfaceKey(base | it.peer.netns, it.peer.ifindex)
                if it.link is not None:
                    it.link = IfaceKey(base | it.link.netns, it.link.ifindex)
            out.namespaces.append(c)
        out.notes += [f"{n.node}: {note}" for note in n.topo.notes]
        out.taken_at = max(out.taken_at, n.topo.taken_at)
    _join_uplinks(out)
    return out


def uplinks(topo: Topology) -> list[Interface]:
    """Interfaces that lead out of their node: a device, or a veth whose peer no
    served namespace holds, that is up and holds an IPv4 address."""
    found = []
    for ns in topo.namespaces:
        for it in ns.interfaces:
            out_of_node = it.kind == "device" or (
                it.kind == "veth" and (it.peer is None or topo.iface(it.peer) is None)
            )
            if out_of_node and it.admin_up and any(a.family == 4 for a in it.addresses):
                found.append(it)
    return found


def _join_uplinks(topo: Topology) -> None:
    """Connect uplinks of different nodes that share an IPv4 subnet (module docstring)."""
    by_net: dict[str, list[Interface]] = {}
    for it in uplinks(topo):
        nets = {
            str(ipaddress.ip_interface(a.cidr).network) for a in it.addresses if a.family == 4
        }
        for net in sorted(nets):
            by_net.setdefault(net, []).append(it)
    joined = {
        net: its
        for net, its in by_net.items()
        if len({node_of(topo.netns_name(i.key.netns)) for i in its}) > 1
    }
    if not joined:
        return
    ns = Namespace(NETWORK_INODE, NETWORK, named=True)
    ifindex = 1
    taken: set[IfaceKey] = set()
    for net, its in joined.items():
        br = _iface(ns, ifindex, f"net{ifindex}", "bridge", max(i.mtu for i in its))
        br.bridge_stp = False
        br.vlan_filtering = False
        ifindex += 1
        for it in its:
            if it.key in taken:  # one cable per uplink, to its first shared subnet
                continue
            taken.add(it.key)
            name = f"{node_of(topo.netns_name(it.key.netns))}-{it.name}"
            port = _iface(ns, ifindex, name, "veth", it.mtu)
            ifindex += 1
            port.master = br.key.ifindex
            port.bridge_port = BridgePortInfo()
            port.peer = it.key
            it.kind, it.peer, it.peer_state = "veth", port.key, None
            it.carrier = True
        topo.notes.append(
            f"{NETWORK}/{br.name}: the nodes' uplinks on {net} are assumed to reach each other "
            "(no agent sees the network between nodes)"
        )
    topo.namespaces.append(ns)


def _iface(ns: Namespace, ifindex: int, name: str, kind: str, mtu: int) -> Interface:
    it = Interface(
        IfaceKey(ns.inode, ifindex), name, kind, admin_up=True, oper_state="UP",
        carrier=True, mtu=mtu,
    )  # fmt: skip
    ns.interfaces.append(it)
    return it


def localise(command: str, topo: Topology) -> str:
    """A fix the path model wrote with merged names, as a person types it on the
    node: `ip -n node-b/pod link ...` -> `on node-b: ip -n pod link ...`."""
    for ns in sorted(topo.namespaces, key=lambda n: -len(n.name)):
        node = node_of(ns.name)
        if not node or ns.name not in command:
            continue
        local = local_name(ns.name)
        if local == "root":
            for form in (f"-n {ns.name} ", f"ip netns exec {ns.name} "):
                command = command.replace(form, "")
        command = command.replace(ns.name, local)
        return f"on {node}: {command}"
    return command
