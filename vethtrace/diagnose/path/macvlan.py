"""macvlan: a child device stacked on a lower device (a veth, a bridge, a NIC),
often in another namespace (CNI's macvlan plugin, a container on the LAN).

What the driver does (drivers/net/macvlan.c):
- A child transmits (macvlan_queue_xmit): in mode bridge, a frame for a
  sibling's MAC (another bridge-mode child of the same lower) goes straight to
  it and a broadcast goes to every bridge-mode sibling as well; everything
  else is sent out of the lower device (dev_queue_xmit on the lower: onto the
  wire, a veth's peer, a bridge's ports). The lower's own IP stack never sees
  a child's frame, not even one addressed to the lower's MAC.
- The lower receives (macvlan_handle_frame, its rx_handler): a broadcast goes
  to every child and to the lower's own stack; a unicast frame for a child's
  MAC goes to that child only; anything else to the lower's stack.
- So the lower's own stack and its children never talk: the classic "the host
  cannot reach its macvlan containers".
Modes private and vepa send everything out of the lower (vepa relies on the
switch to hairpin); passthru and source are not modelled (an unknown hop).
ipvlan is not built by this kernel, so not modelled either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vethtrace.diagnose.path import l2
from vethtrace.diagnose.path.flow import Hop
from vethtrace.diagnose.path.l2 import Frame, L2Result, dead_end
from vethtrace.model import Interface

if TYPE_CHECKING:
    from vethtrace.diagnose.path.walk import Walker


def children(w: Walker, lower: Interface) -> list[Interface]:
    """The macvlan devices stacked on `lower`, in any namespace (indexed once per topology)."""
    idx = w.floods.get("macvlan-children")
    if idx is None:
        idx = {}
        for ns in w.topo.namespaces:
            for i in ns.interfaces:
                if i.kind in ("macvlan", "macvtap") and i.link is not None:
                    idx.setdefault(i.link, []).append(i)
        w.floods["macvlan-children"] = idx
    return list(idx.get(lower.key, []))


def send(w: Walker, child: Interface, frame: Frame, trail: list[Hop]) -> L2Result:
    """`child` (a macvlan) transmits `frame`."""
    ns = w.ns_of(child)
    lower = w.topo.iface(child.link)
    mode = child.macvlan_mode or "bridge"
    if lower is None or mode in ("passthru", "source"):
        why = "its lower device is out of sight" if lower is None else f"mode {mode}"
        return dead_end(
            trail,
            w.hop(
                ns,
                child,
                "macvlan",
                f"leaves through macvlan {child.name}",
                f"macvlan mode {mode}",
                "unknown",
                f"frames leaving this macvlan are not modelled ({why})",
            ),
        )
    lns = w.ns_of(lower)
    out = L2Result()
    siblings = [
        s
        for s in children(w, lower)
        if s.key != child.key and s.admin_up and (s.macvlan_mode or "bridge") == "bridge"
    ]
    if mode == "bridge":
        if frame.dst_mac is not None:
            target = next((s for s in siblings if s.mac == frame.dst_mac), None)
            if target is not None:
                hop = w.hop(
                    ns,
                    child,
                    "macvlan",
                    f"to sibling {w.ns_of(target).name}/{target.name} (macvlan bridge mode)",
                    f"macvlan mode bridge on {lns.name}/{lower.name}",
                )
                return l2.receive(w, target, frame, [*trail, hop])
        else:
            for s in siblings:
                hop = w.hop(
                    ns,
                    child,
                    "macvlan",
                    f"broadcast to sibling {w.ns_of(s).name}/{s.name} (macvlan bridge mode)",
                    f"macvlan mode bridge on {lns.name}/{lower.name}",
                )
                out.add(l2.receive(w, s, frame, [*trail, hop]))
    hop = w.hop(
        ns,
        child,
        "macvlan",
        f"out of its lower device {lns.name}/{lower.name} (never to {lower.name}'s own stack)",
        f"macvlan {child.name} link {lower.name} mode {mode}",
    )
    out.add(l2.send(w, lower, frame, [*trail, hop]))
    return out


def receive(w: Walker, lower: Interface, frame: Frame, trail: list[Hop]) -> L2Result | None:
    """`lower` receives `frame` and has macvlan children: who gets it (None: no
    children, the caller goes on as for any device)."""
    kids = [c for c in children(w, lower) if c.admin_up]
    if not kids:
        return None
    lns = w.ns_of(lower)
    out = L2Result()
    if frame.dst_mac is None:
        for c in kids:
            hop = w.hop(
                lns,
                lower,
                "macvlan",
                f"broadcast to macvlan {w.ns_of(c).name}/{c.name}",
                f"macvlan {c.name} link {lower.name}",
            )
            out.add(l2.receive(w, c, frame, [*trail, hop]))
        out.reached.append((lower, trail))
        return out
    target = next((c for c in kids if c.mac == frame.dst_mac), None)
    if target is None:
        return None
    hop = w.hop(
        lns,
        lower,
        "macvlan",
        f"to macvlan {w.ns_of(target).name}/{target.name} (its MAC)",
        f"macvlan {target.name} link {lower.name} address {target.mac}",
    )
    return l2.receive(w, target, frame, [*trail, hop])
