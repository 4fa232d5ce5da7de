"""What discovery reads from /proc and /sys rather than netlink: per-namespace
sysctl files, iptables-legacy tables, and whether kernel code is present.

Kept apart from capture.py (the netlink side) because these reads follow
different rules: /proc/sys/net follows the calling *thread's* namespace,
/proc/net the thread group leader's, and asking whether a module is there must
never make the kernel load it.
"""

from __future__ import annotations

import os

# Namespace-wide sysctls that change how frames are forwarded or answered.
# ip_forward, rp_filter, proxy_arp and IPv6 forwarding come from netlink
# (RTM_GETNETCONF); the rest only exist as files, read relative to one
# directory fd each.
# Why so frugal: every namespace has its own /proc/sys/net/ipv4 (and bridge)
# dentry under the same parent and name, so each lookup of that component
# scans the dentries of *all* namespaces (~0.3 us each, under a spinlock):
# one lookup per directory per namespace, and net/bridge only where it can
# matter (br_netfilter loaded and the namespace has a bridge).
IPV4_FILES = (
    "net/ipv4",
    [
        "conf/all/arp_ignore",
        "conf/all/arp_filter",
        "conf/all/arp_accept",
        "conf/all/arp_announce",
        "conf/all/accept_local",
        "conf/all/route_localnet",
        "icmp_echo_ignore_all",
        "icmp_echo_ignore_broadcasts",
    ],
)
BRIDGE_NF = (
    "net/bridge",
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"],
)


def module_present(name: str) -> bool:
    """Whether kernel code `name` is there without loading anything: asking
    nfnetlink for nf_tables while it is an unloaded module would make the kernel
    load it, a state change we must not cause (and then no rules exist anyway)."""
    if os.path.exists(f"/sys/module/{name}"):
        return True  # loaded (or built in with parameters)
    if not os.path.exists("/proc/modules"):
        return True  # no loadable modules: built in or absent, asking loads nothing
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.builtin") as f:
            return f"/{name}.ko" in f.read()
    except OSError:
        return False


def read_iptables_legacy() -> list[str]:
    """x_tables (iptables-legacy) tables of the calling thread's namespace."""
    try:
        fd = os.open("/proc/thread-self/net/ip_tables_names", os.O_RDONLY)
    except OSError:
        return []
    try:
        return sorted(os.read(fd, 4096).decode().split())
    finally:
        os.close(fd)


def read_sysctls(bridges: bool) -> dict[str, str]:
    """Sysctl files of the calling *thread's* namespace (/proc/sys/net follows
    current->nsproxy, unlike /proc/net which follows the thread group leader).
    Missing files are left out (net/bridge exists only with br_netfilter)."""
    out: dict[str, str] = {}
    for rel, names in (IPV4_FILES, BRIDGE_NF) if bridges else (IPV4_FILES,):
        try:
            dfd = os.open(f"/proc/sys/{rel}", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            for name in names:
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                except OSError:
                    continue
                try:
                    out[f"{rel}/{name}".replace("/", ".")] = os.read(fd, 64).decode().strip()
                finally:
                    os.close(fd)
        finally:
            os.close(dfd)
    return out


def br_netfilter_loaded() -> bool:
    # br_netfilter may be built in (no /sys/module entry): ask where it shows.
    return os.path.exists("/proc/sys/net/bridge")
