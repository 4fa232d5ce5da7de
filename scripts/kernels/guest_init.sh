#!/bin/sh
# PID 1 inside a kernel-matrix guest (after the initramfs): mount what bcc and
# iproute2 need, put this kernel's modules and headers where bcc looks, run
# guest_checks.py, then power off. PID 1 must never exit (that is a panic).
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /lib/modules /usr/src
mount --bind /vk/kernel/lib/modules /lib/modules
mount --bind /vk/kernel/usr/src /usr/src
hostname vkguest
ip link set lo up
echo "VK_BOOTED $(uname -r) $(cut -d' ' -f1 /proc/uptime)"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/vk/project:/vk/pylib PYTHONDONTWRITEBYTECODE=1 HOME=/root TERM=dumb
printf '#!/bin/sh\nexec python3 -c "import sys; from vethtrace.cli import main; sys.exit(main())" "$@"\n' \
    > /usr/local/bin/vethtrace
chmod +x /usr/local/bin/vethtrace
cd /vk/results
timeout -k 5 "${VK_TEST_TIMEOUT:-900}" python3 /vk/project/scripts/kernels/guest_checks.py
echo "VK_DONE rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
echo o > /proc/sysrq-trigger
sleep 60
