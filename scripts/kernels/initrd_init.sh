#!/bin/busybox sh
# PID 1 of the kernel-matrix initramfs: load the modules that reach the root disk
# and the 9p shares (listed in dependency order by the host's modprobe), mount
# them, and hand over to scripts/kernels/guest_init.sh from the project share.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "VK_BOOTFAIL $*"; echo o > /proc/sysrq-trigger; sleep 30; }
for m in $(cat /mods/order); do
    insmod "/mods/$m" 2>/dev/null || echo "initrd: insmod $m failed (built in?)"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vda /newroot || fail "cannot mount the root image"
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro,cache=loose" project /newroot/vk/project || fail "project share"
mount -t 9p -o "$opts,ro,cache=loose" pylib /newroot/vk/pylib || fail "pylib share"
mount -t 9p -o "$opts,ro,cache=loose" kernel /newroot/vk/kernel || fail "kernel share"
mount -t 9p -o "$opts" results /newroot/vk/results || fail "results share"
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /vk/project/scripts/kernels/guest_init.sh
