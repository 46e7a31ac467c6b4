#!/bin/sh
# PID 1 of the lxdmig test VM: mount what a host has, load the modules CRIU and
# the test bed need, run the guest tests, print the verdict, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8
# The initramfs root cannot be pivoted away from (CRIU's restore pivots into
# the container's root): move everything to a tmpfs and start again there.
if [ ! -e /.lxdmig-switched ]; then
    mkdir -p /mnt && mount -t tmpfs -o size=85% tmpfs /mnt
    for entry in /* /.[!.]*; do
        case "$entry" in /mnt|/proc|/sys|/dev|'/.[!.]*') continue ;; esac
        cp -a "$entry" /mnt/
    done
    mkdir -p /mnt/proc /mnt/sys /mnt/dev /mnt/mnt
    touch /mnt/.lxdmig-switched
    exec switch_root /mnt /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
# cgroups laid out like the host's (hybrid: cgroup1 controllers, cgroup2 beside)
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
for m in veth bridge llc stp nfnetlink nf_tables nft_compat nft_ct nft_counter nft_chain_nat nf_conntrack \
         nf_defrag_ipv4 nf_defrag_ipv6 libcrc32c x_tables ip_tables iptable_filter ip6_tables ip6table_filter \
         xt_mark xt_conntrack inet_diag tcp_diag udp_diag raw_diag unix_diag netlink_diag packet_diag af_packet_diag \
         tun overlay sch_netem virtio_pci virtio_blk ext4; do
    modprobe -q $m 2>/dev/null
done
ip link set lo up
hostname lxdmig-vm
echo 4194304 > /proc/sys/fs/pipe-max-size
# The disks the host made (tests/vm/image.py: disks): device, directory, options, one per line. What
# the initramfs already holds there (the workload binary) is copied onto a writable disk first.
mkdir -p /run/lxdmig-disk
while read -r dev dir options; do
    mkdir -p "$dir" && mount -t ext4 -o "$options" "$dev" /run/lxdmig-disk &&
        { [ "$options" = ro ] || cp -a "$dir"/. /run/lxdmig-disk/; } &&
        mount --move /run/lxdmig-disk "$dir" || echo "LXDMIG-VM-MOUNT-FAILED $dev $dir"
done < /lxdmig/vm-mounts
echo "LXDMIG-VM-BOOTED $(uname -r) $(cut -d' ' -f1 /proc/uptime)"
set --  # pytest arguments from the host, one per line
while IFS= read -r arg; do set -- "$@" "$arg"; done < /lxdmig/vm-args
cd /lxdmig && LXDMIG_IN_VM=1 PYTHONPATH=/lxdmig python3 -m pytest -p no:cacheprovider \
    -rA -s --tb=short --color=no --durations=15 "$@" tests/vm/guest
echo "LXDMIG-VM-EXIT $?"
sync
echo o > /proc/sysrq-trigger
sleep 10
