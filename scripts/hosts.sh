#!/usr/bin/env bash
# scripts/hosts.sh up|down|status|cut|heal|split|rejoin [NAME]
#
# Two VM hosts and a client host on one machine, for the tests, the demo and the
# benchmarks (issue 11). Everything lives in network namespaces, so no traffic reaches the
# machine's own interfaces:
#
#   NAME-lan      the LAN: one bridge (lan0) joining the hosts' cables
#   NAME-a        host A: eth0 (10.77.0.1/24) and tap0, the TAP for the guest it runs,
#                 both on a bridge br0 that plays the host's virtual switch
#   NAME-b        host B: the same, 10.77.0.2/24
#   NAME-client   the client host: eth0 10.77.0.10/24
#
# The guest's address on the LAN is 10.77.0.100/24 (gateway none); whichever host runs it
# live puts its frames on the LAN through that host's tap0. The logging channel between
# the VMMs goes over the same LAN (host A's and B's addresses), so cutting a host's cable
# (`cut a`) is what a power loss looks like to its peer: silence on both. `split` breaks
# only the channel: hosts A and B stop routing to each other (a partition between them)
# while both stay on the LAN, where the guest's frames travel at layer 2.
#
# The shared storage both hosts see is /tmp/NAME/shared (the namespaces share the file
# system). `up` is idempotent (it tears down what an earlier run left first); `down`
# removes every namespace, interface and the directory.
#
# Run a command on a host with: ip netns exec NAME-a COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

action=${1:-}
name=${2:-${FTVM_HOSTS:-ftvm}}
# Interface names are at most 15 bytes; the namespaces' names are free-form.
lan=$name-lan
hosts=(a b client)
declare -A addr=([a]=10.77.0.1 [b]=10.77.0.2 [client]=10.77.0.10)
GUEST_ADDR=10.77.0.100

usage() {
    echo "usage: scripts/hosts.sh up|down|status|split|rejoin [NAME] | cut|heal HOST [NAME]" >&2
    exit 2
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

down() {
    local h
    for h in "${hosts[@]}" lan; do
        if ns_exists "$name-$h"; then
            # Deleting a namespace deletes its interfaces, and a veth's peer with it.
            ip netns del "$name-$h"
        fi
    done
    rm -rf "/tmp/$name"
}

up() {
    ensure_tools ip:iproute2 ping:iputils-ping
    down
    ip netns add "$lan"
    ip netns exec "$lan" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$lan" link add lan0 type bridge
    ip -n "$lan" link set lan0 up
    ip -n "$lan" link set lo up
    local h ns
    for h in "${hosts[@]}"; do
        ns=$name-$h
        ip netns add "$ns"
        # IPv4 only: no router solicitations or MLD reports chattering at the guests.
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
        # The cable: eth0 in the host, port-HOST on the LAN's bridge.
        ip link add "v$$${h:0:1}" type veth peer name "l$$${h:0:1}"
        ip link set "v$$${h:0:1}" netns "$ns"
        ip -n "$ns" link set "v$$${h:0:1}" name eth0
        ip link set "l$$${h:0:1}" netns "$lan"
        ip -n "$lan" link set "l$$${h:0:1}" name "port-$h"
        ip -n "$lan" link set "port-$h" master lan0 up
        if [ "$h" = client ]; then
            ip -n "$ns" addr add "${addr[$h]}/24" dev eth0
            ip -n "$ns" link set eth0 up
        else
            # A VM host: its own address and the guest's TAP on one bridge, as a host's
            # virtual switch would have them.
            ip -n "$ns" link add br0 type bridge
            ip -n "$ns" link set eth0 master br0 up
            ip -n "$ns" tuntap add dev tap0 mode tap
            ip -n "$ns" link set tap0 master br0 up
            ip -n "$ns" addr add "${addr[$h]}/24" dev br0
            ip -n "$ns" link set br0 up
        fi
    done
    mkdir -p "/tmp/$name/shared"
    chmod 700 "/tmp/$name/shared"
    # The hosts reach each other before anyone relies on it.
    local i
    for i in $(seq 1 50); do
        ip netns exec "$name-a" ping -c1 -W1 -q "${addr[b]}" >/dev/null 2>&1 && break
        sleep 0.1
    done
    ip netns exec "$name-a" ping -c1 -W1 -q "${addr[b]}" >/dev/null ||
        { log "host A cannot reach host B on the LAN"; return 1; }
    ip netns exec "$name-client" ping -c1 -W1 -q "${addr[a]}" >/dev/null ||
        { log "the client cannot reach host A on the LAN"; return 1; }
    status
}

status() {
    local h
    for h in "${hosts[@]}"; do
        if ns_exists "$name-$h"; then
            printf '%-8s %-14s %s\n' "$h" "${addr[$h]}" \
                "$(ip -n "$name-$h" -br link show eth0 | awk '{print $2}')"
        else
            printf '%-8s absent\n' "$h"
        fi
    done
    printf '%-8s %-14s %s\n' guest "$GUEST_ADDR" "(on the LAN through the live host's tap0)"
    printf 'shared   /tmp/%s/shared\n' "$name"
}

# The host's cable out of the LAN (both directions at once, as a power loss would be).
cut() { ip -n "$lan" link set "port-$1" down; }
heal() { ip -n "$lan" link set "port-$1" up; }

# The logging channel between A and B broken, both hosts still on the LAN: each drops what
# it would send to the other (blackhole routes; the other's packets never come either).
split() {
    ip -n "$name-a" route replace blackhole "${addr[b]}/32"
    ip -n "$name-b" route replace blackhole "${addr[a]}/32"
}
rejoin() {
    ip -n "$name-a" route del blackhole "${addr[b]}/32" 2>/dev/null || true
    ip -n "$name-b" route del blackhole "${addr[a]}/32" 2>/dev/null || true
}

case "$action" in
up) up ;;
down) down ;;
status) status ;;
split | rejoin) "$action" ;;
cut | heal)
    host=${2:-}
    name=${3:-${FTVM_HOSTS:-ftvm}}
    lan=$name-lan
    case "$host" in a | b | client) ;; *) usage ;; esac
    "$action" "$host"
    ;;
*) usage ;;
esac
