#!/bin/sh
# lxdmig test host, each boot: take this host's name, addresses and SSH key from its data disk
# (/mnt/lxdmig/host.conf: NAME, ADDRESS and LINK_MAC of the migration network, HOSTS lines).
# The other card is qemu's user-mode management network (SSH). Every host also gets the same decoy
# address on a docker0 of its own (as two hosts with Docker have), which must not confuse pairing.
set -eu
conf=/mnt/lxdmig/host.conf
[ -r "$conf" ] || { echo "lxdmig-first-boot: no $conf" >&2; exit 1; }
. "$conf"
hostname "$NAME"
echo "$NAME" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n%s' "$NAME" "$HOSTS" > /etc/hosts
modprobe virtio_net 2>/dev/null || true
udevadm settle -t 30 || true
nic_with_mac() {
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2>/dev/null)" = "$1" ] && { basename "$dev"; return 0; }
    done
    return 1
}
link=""
for _ in $(seq 60); do
    link=$(nic_with_mac "$LINK_MAC") && break
    sleep 0.5
done
[ -n "$link" ] || { echo "lxdmig-first-boot: no card with $LINK_MAC" >&2; exit 1; }
mgmt=$(ls /sys/class/net | grep -v -x -e lo -e "$link" | head -n1)
ip link set lo up
# The migration network's card is in a bridge, br0, with the host's address: containers are plugged
# into it (lxc.net.0.link = br0), their addresses reachable from both hosts.
ip link add br0 address "$LINK_MAC" type bridge
ip link set "$link" master br0
ip link set "$link" up
ip link set br0 up
ip addr add "$ADDRESS/24" dev br0
ip link set "$mgmt" up
ip addr add 203.0.113.15/24 dev "$mgmt"
ip link add docker0 type dummy 2>/dev/null || true
ip addr add 198.18.0.1/15 dev docker0 2>/dev/null || true
ip link set docker0 up
mkdir -p /root/.ssh
install -m 0600 /mnt/lxdmig/ssh/authorized_keys /root/.ssh/authorized_keys
install -m 0600 /mnt/lxdmig/ssh/id_ed25519 /root/.ssh/id_ed25519
printf 'StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\nLogLevel ERROR\n' > /root/.ssh/config
ssh-keygen -A >/dev/null
echo "LXDMIG-HOST-UP $NAME $ADDRESS $link $(uname -r) $(cut -d' ' -f1 /proc/uptime)" > /dev/console
