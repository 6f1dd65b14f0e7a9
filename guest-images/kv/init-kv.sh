#!/bin/sh
# kv-init: start one role of the primary/backup key/value service inside a busybox guest.
#
# Installed by scripts/build-kv.sh as /bin/kv-init next to the static viewservice, kvserver
# and kvclient binaries. The stock-kernel init runs the command given after `--` on the
# kernel command line, so a guest is started with e.g.
#
#   ... kv.role=server kv.ip=10.0.2.15/24 kv.vs=10.0.2.2:7000 kv.listen=10.0.2.15:7001 -- kv-init
#
# It can also be sourced or run by hand, with the role and the binary's arguments given
# directly, which override the command line: `kv-init client get k`.
#
# Kernel command line parameters (all optional except as noted):
#   kv.role=viewservice|server|client   which binary to run (required unless given as $1);
#           |service                    service: the view service and two servers together
#   kv.dev=eth0                         network device to configure (default eth0)
#   kv.ip=ADDR/PREFIX                   address of kv.dev (the device is left alone if unset)
#   kv.gw=ADDR                          default route
#   kv.vs=IP:PORT                       the view service (server and client roles)
#   kv.listen=IP:PORT                   where to listen (viewservice: default 0.0.0.0:7000;
#                                       server: default 0.0.0.0:7001)
#   kv.advertise=IP:PORT                server's address in views (default: kv.listen, or
#                                       kv.ip's address with kv.listen's port)
#   kv.ping_ms=N                        ping interval in milliseconds
#   kv.dead_pings=N                     viewservice: dead after N missed pings
#   kv.client=ARG,ARG,...               client role: kvclient's command, commas for spaces
#                                       (default: view)
#   kv.verbose=1                        print view changes
# KV_BIN names a directory searched first for the binaries (for testing on a host).
PATH=${KV_BIN:+$KV_BIN:}/bin:/sbin:/usr/bin:/usr/sbin
export PATH

kv_role= kv_dev=eth0 kv_ip= kv_gw= kv_vs= kv_listen= kv_advertise=
kv_ping_ms= kv_dead_pings= kv_client= kv_verbose=

# KV_CMDLINE names another file to read the parameters from (for testing on a host).
cmdline=${KV_CMDLINE:-/proc/cmdline}
if [ -r "$cmdline" ]; then
    # shellcheck disable=SC2013
    for word in $(cat "$cmdline"); do
        case "$word" in
            --) break ;;
            kv.role=*) kv_role=${word#kv.role=} ;;
            kv.dev=*) kv_dev=${word#kv.dev=} ;;
            kv.ip=*) kv_ip=${word#kv.ip=} ;;
            kv.gw=*) kv_gw=${word#kv.gw=} ;;
            kv.vs=*) kv_vs=${word#kv.vs=} ;;
            kv.listen=*) kv_listen=${word#kv.listen=} ;;
            kv.advertise=*) kv_advertise=${word#kv.advertise=} ;;
            kv.ping_ms=*) kv_ping_ms=${word#kv.ping_ms=} ;;
            kv.dead_pings=*) kv_dead_pings=${word#kv.dead_pings=} ;;
            kv.client=*) kv_client=${word#kv.client=} ;;
            kv.verbose=*) kv_verbose=${word#kv.verbose=} ;;
        esac
    done
fi

if [ $# -gt 0 ]; then
    kv_role=$1
    shift
fi

die() {
    echo "kv-init: $*" >&2
    exit 1
}

# Network: loopback always; kv.dev when kv.ip is given.
ip link set lo up 2>/dev/null
if [ -n "$kv_ip" ]; then
    ip addr add "$kv_ip" dev "$kv_dev" || die "cannot set $kv_ip on $kv_dev"
    ip link set "$kv_dev" up || die "cannot bring $kv_dev up"
    if [ -n "$kv_gw" ]; then
        ip route add default via "$kv_gw" || die "cannot add route via $kv_gw"
    fi
fi

verbose=
[ "$kv_verbose" = 1 ] && verbose=--verbose
ping=
[ -n "$kv_ping_ms" ] && ping="--ping-interval-ms $kv_ping_ms"

case "$kv_role" in
    viewservice)
        dead=
        [ -n "$kv_dead_pings" ] && dead="--dead-pings $kv_dead_pings"
        echo "kv-init: starting viewservice"
        # shellcheck disable=SC2086
        exec viewservice --listen "${kv_listen:-0.0.0.0:7000}" $ping $dead $verbose "$@"
        ;;
    server)
        [ -n "$kv_vs" ] || die "kv.role=server needs kv.vs=IP:PORT"
        listen=${kv_listen:-0.0.0.0:7001}
        advertise=$kv_advertise
        if [ -z "$advertise" ]; then
            case "$listen" in
                0.0.0.0:*)
                    [ -n "$kv_ip" ] || die "kv.listen=$listen needs kv.advertise or kv.ip"
                    advertise="${kv_ip%/*}:${listen##*:}"
                    ;;
                *) advertise=$listen ;;
            esac
        fi
        echo "kv-init: starting kvserver $advertise"
        # shellcheck disable=SC2086
        exec kvserver --vs "$kv_vs" --listen "$listen" --advertise "$advertise" $ping $verbose "$@"
        ;;
    service)
        # The whole service in one guest (the lecture's view service and its primary and
        # backup servers as processes of the fault-tolerant VM): the view service on port
        # 7000, servers on 7001 and 7002, all on the guest's address. Started in the
        # background; kv-init returns once all three run.
        addr=${kv_ip%/*}
        [ -n "$addr" ] || addr=$(ip -4 -o addr show dev "$kv_dev" 2>/dev/null |
            sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n1)
        [ -n "$addr" ] || die "kv.role=service needs kv.ip or an address on $kv_dev"
        dead=
        [ -n "$kv_dead_pings" ] && dead="--dead-pings $kv_dead_pings"
        # A ping costs a TCP connection through the guest's kernel: tens of milliseconds
        # where KVM emulates kernel mode (../shared/HOST-KVM.md). The binaries' 100 ms
        # would keep such a guest busy pinging, so the whole-service role pings once a
        # second unless kv.ping_ms says otherwise.
        [ -n "$ping" ] || ping="--ping-interval-ms 1000"
        # shellcheck disable=SC2086
        viewservice --listen "0.0.0.0:7000" $ping $dead $verbose >/tmp/viewservice.log 2>&1 &
        for port in 7001 7002; do
            # shellcheck disable=SC2086
            kvserver --vs "127.0.0.1:7000" --listen "0.0.0.0:$port" \
                --advertise "$addr:$port" $ping $verbose >"/tmp/kvserver-$port.log" 2>&1 &
        done
        echo "kv-init: service on $addr (view service :7000, servers :7001 :7002)"
        ;;
    client)
        [ -n "$kv_vs" ] || die "kv.role=client needs kv.vs=IP:PORT"
        if [ $# -eq 0 ]; then
            # shellcheck disable=SC2046
            set -- $(echo "${kv_client:-view}" | tr ',' ' ')
        fi
        exec kvclient --vs "$kv_vs" "$@"
        ;;
    "")
        die "no role: give kv.role=viewservice|server|client on the kernel command line"
        ;;
    *)
        die "unknown role $kv_role (expected viewservice, server, client or service)"
        ;;
esac
