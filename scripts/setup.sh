#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 / Ubuntu machine, as root:
# distribution packages (bcc comes from here, not PyPI), kernel headers that bcc
# can compile against, tracefs, and a virtualenv with the pinned Python deps.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (installs packages, loads BPF in tests)" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
ARCH=$(dpkg --print-architecture)
KREL=$(uname -r)
PKGS=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools libbpfcc iproute2 nftables
      python3-nftables
      iptables tshark graphviz plotnetcfg bpftrace bpftool iperf3 tmux ethtool iputils-ping
      procps kmod make ca-certificates tcpdump
      containernetworking-plugins  # lab [[cni]] steps: bridge, ptp, macvlan, portmap, tuning, firewall
      qemu-system-x86 mmdebstrap cpio busybox-static e2fsprogs xz-utils zstd  # kernel matrix
      docker.io podman  # container tests: daemons started in a namespace of their own
      python3-yaml util-linux)  # deploy/ manifests checked by tests; unshare for the full-disk test

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { say "apt-get update"; apt-get update -q >/dev/null; apt_updated=1; }; }

if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    say "installing ${missing[*]}"
    # docker.io's and containerd's maintainer scripts start their daemons in the
    # root namespace (iptables rules, docker0) where init scripts run; tests start
    # their own in a namespace of theirs, so forbid service starts while installing.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
fi

# Kernel headers. bcc needs *some* headers to compile; the struct layouts we use
# come from the running kernel's BTF, so generic headers are fine as long as we
# never pretend they match. Matching headers win when the distribution has them.
have_generic=$(ls /var/lib/vethtrace/headers/*/.complete 2>/dev/null | head -1 || true)
if [ ! -e "/lib/modules/$KREL/build" ] && [ -z "$have_generic" ]; then
    if ! dpkg-query -W -f='${Status}' "linux-headers-$KREL" 2>/dev/null | grep -q "ok installed"; then
        apt_update
        if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
            say "installing matching headers linux-headers-$KREL"
            apt-get install -y -q --no-install-recommends "linux-headers-$KREL" >/dev/null
        fi
    fi
fi
if [ ! -e "/lib/modules/$KREL/build" ]; then
    generic=linux-headers-$ARCH
    grep -qi ubuntu /etc/os-release && generic=linux-headers-generic
    if ! dpkg-query -W -f='${Status}' "$generic" 2>/dev/null | grep -q "ok installed"; then
        apt_update
        say "no headers for $KREL in the distribution: installing generic $generic"
        apt-get install -y -q --no-install-recommends "$generic" >/dev/null
    fi
    # Debian splits headers into -common (source) and -$ARCH (build); bcc's
    # BCC_KERNEL_SOURCE takes one tree, so merge them as a symlink farm that is
    # labelled generic (vethtrace reads this label and says so in `doctor`).
    build=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$build" ] || build=$(ls -d /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$build" ]; then
        ver=$(basename "$build"); ver=${ver#linux-headers-}
        dest=/var/lib/vethtrace/headers/$ver
        if [ ! -e "$dest/.complete" ]; then
            say "merging generic headers $ver into $dest"
            rm -rf "$dest"; mkdir -p "$dest"
            common=${build%-"$ARCH"}-common
            [ -d "$common" ] && cp -rs "$common/." "$dest/"
            cp -rsf "$build/." "$dest/"
            echo "$ver" > "$dest/.complete"
        fi
    fi
fi

# tracefs: bcc attaches tracepoints through it.
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# The venv is made from the distribution's python3 with system site packages so
# that Debian's bcc bindings (python3-bpfcc, not on PyPI) are importable; the
# other dependencies come pinned from PyPI into the venv.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    say "creating $VENV (system site packages for bcc)"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp=$VENV/.installed-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    say "installing vethtrace and pinned Python dependencies"
    # compat: a plain path entry in a .pth file; the default editable mode installs
    # an import hook that loads pathlib & co. at every start (~10 ms per command).
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]" \
        --config-settings editable_mode=compat
    rm -f "$VENV"/.installed-*; touch "$stamp"
fi
# Byte-code for the package now, so that no command compiles it at its start:
# ~20 ms of `trace`'s start to attached (issue #18), and with PYTHONDONTWRITEBYTECODE
# set Python would compile it at every start. Quick when it is up to date.
"$VENV/bin/python" -m compileall -q vethtrace
ln -sf "$VENV/bin/vethtrace" /usr/local/bin/vethtrace

# The probe sets trace/watch, ping and record use, compiled once into the probe
# cache (/var/cache/vethtrace): the filter and the -n scope are map data, so the
# first command starts without bcc's ~1 s compile whatever its filter.
# Idempotent: a set already cached only loads (well under a second).
if ! "$VENV/bin/vethtrace" doctor --prepare >&2; then
    say "probe sets not prepared (vethtrace doctor --prepare failed): commands compile on first use"
fi
