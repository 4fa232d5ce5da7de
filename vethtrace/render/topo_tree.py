"""`vethtrace topo`: the topology as a tree a person reads in one glance.

One branch per namespace; bridges carry their ports nested; every veth end
points at its peer as "veth0 ⇄ vt-song/veth1". What usually breaks
connectivity is coloured where it sits (admin down, no carrier, a port that
does not forward, a peer that cannot be found) rather than listed elsewhere.
Link-local IPv6 addresses are left out (every interface has one); --json has them.
"""

from __future__ import annotations

from rich.text import Text
from rich.tree import Tree

from vethtrace.model import Interface, Namespace, Topology

PEER_PROBLEM = {
    "missing": "peer missing",
    "netns-gone": "peer's namespace is gone",
    "unknown": "peer in a namespace we cannot see",
}


def state_badge(iface: Interface) -> Text:
    """UP / DOWN / NO-CARRIER, coloured; the one word that says if frames can pass."""
    if not iface.admin_up:
        return Text("DOWN", style="bold red")
    if iface.kind == "loopback":
        return Text("UP", style="green")
    if not iface.carrier:
        return Text("NO-CARRIER", style="bold yellow")
    return Text("UP", style="green")


def _addresses(iface: Interface) -> str:
    return " ".join(a.cidr for a in iface.addresses if not (a.family == 6 and a.scope == "link"))


def iface_line(topo: Topology, iface: Interface, port_of: Interface | None = None) -> Text:
    line = Text()
    line.append(iface.name, style="bold")
    line.append(f"  {iface.kind}", style="dim")
    line.append("  ")
    line.append_text(state_badge(iface))
    if iface.mtu not in (1500, 65536, 0):  # only the unusual ones: mismatches drop frames
        line.append(f"  mtu {iface.mtu}", style="yellow")
    if iface.kind == "bridge":
        line.append("  stp on" if iface.bridge_stp else "  stp off", style="dim")
        if iface.vlan_filtering:
            line.append(" vlan-filtering", style="dim")
    port = iface.bridge_port
    if port is not None:
        if port.state != "forwarding":
            line.append(f"  port {port.state}", style="bold red")
        flags = [
            name
            for name, on in (
                ("isolated", port.isolated),
                ("hairpin", port.hairpin),
                ("no-learning", not port.learning),
                ("no-flood", not port.flood),
            )
            if on
        ]
        if flags:
            line.append("  " + ",".join(flags), style="yellow")
    addrs = _addresses(iface)
    if addrs:
        # An address on a bridge port is the classic mistake: show it, loudly.
        on_port = port_of is not None and port_of.kind == "bridge"
        line.append(f"  {addrs}", style="bold magenta" if on_port else "cyan")
        if on_port:
            line.append(" (IP on a port!)", style="magenta")
    if iface.kind == "veth" or iface.peer is not None:
        line.append("  ⇄ ", style="blue")
        if iface.peer is not None:
            line.append(topo.label(iface.peer), style="blue")
        else:
            line.append(PEER_PROBLEM.get(iface.peer_state or "", "peer unknown"), style="bold red")
    elif iface.link is not None:
        line.append(f"  on {topo.label(iface.link)}", style="dim")
    return line


def ns_label(ns: Namespace) -> Text:
    label = Text()
    label.append(ns.name, style="bold dim" if ns.partial else "bold")
    label.append(f"  netns {ns.inode}", style="dim")
    if not ns.named and ns.name != "root":
        label.append(f"  pids {','.join(map(str, ns.pids[:3]))}", style="dim")
    if ns.partial:
        label.append("  (outside the selection: peers only)", style="dim italic")
        return label
    facts = []
    if ns.sysctls.get("net.ipv4.ip_forward") == "1":
        facts.append("ip_forward")
    fw = ns.firewall
    if fw.get("forward_drop"):
        facts.append("nft forward can drop")
    if fw.get("bridge_forward_drop"):
        facts.append("nft bridge forward can drop")
    if fw.get("iptables_legacy"):
        facts.append("iptables-legacy: " + ",".join(fw["iptables_legacy"]))
    if facts:
        label.append("  " + " · ".join(facts), style="yellow")
    return label


def _add_namespace(tree: Tree, topo: Topology, ns: Namespace) -> None:
    branch = tree.add(ns_label(ns))
    if ns.partial:
        for iface in ns.interfaces:
            if iface.peer is not None:
                peer_ns = topo.netns(iface.peer.netns)
                if peer_ns is not None and not peer_ns.partial:
                    branch.add(Text.assemble(iface_line(topo, iface), style="dim"))
        return
    by_index = {i.key.ifindex: i for i in ns.interfaces}
    ports: dict[int, list[Interface]] = {}
    for iface in ns.interfaces:
        if iface.master is not None and iface.master in by_index:
            ports.setdefault(iface.master, []).append(iface)

    def add(parent: Tree, iface: Interface, master: Interface | None) -> None:
        node = parent.add(iface_line(topo, iface, master))
        children = ports.get(iface.key.ifindex, [])
        if iface.kind == "bridge" and not children:
            node.add(Text("no ports", style="yellow"))
        for child in children:
            add(node, child, iface)

    for iface in ns.interfaces:
        if iface.master is None or iface.master not in by_index:
            add(branch, iface, None)


def tree(topo: Topology) -> Tree:
    shown = [ns for ns in topo.namespaces if not ns.partial]
    ifaces = sum(len(ns.interfaces) for ns in shown)
    veths = sum(1 for ns in shown for i in ns.interfaces if i.kind == "veth")
    bridges = sum(1 for ns in shown for i in ns.interfaces if i.kind == "bridge")
    title = Text()
    title.append("vethtrace topo", style="bold")
    counts = [
        (len(shown), "namespace"),
        (ifaces, "interface"),
        (veths, "veth end"),
        (bridges, "bridge"),
    ]
    title.append(
        "  " + " · ".join(f"{n} {w}{'' if n == 1 else 's'}" for n, w in counts), style="dim"
    )
    root = Tree(title, guide_style="dim")
    for ns in topo.namespaces:
        _add_namespace(root, topo, ns)
    return root


def notes(topo: Topology) -> list[Text]:
    return [Text(f"note: {n}", style="dim") for n in topo.notes]
