# Shared helpers for ftvm's scripts (sourced, not run).

log() { printf '[ftvm] %s\n' "$*" >&2; }

# ensure_tools TOOL:PACKAGE... — install the Debian packages whose tools are missing.
# Idempotent: does nothing (and needs no network) when every tool is present.
ensure_tools() {
    local missing=()
    local pair tool pkg
    for pair in "$@"; do
        tool=${pair%%:*}
        pkg=${pair#*:}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        log "need root to install packages (run as root or install: ${missing[*]})"
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The tools every ftvm build and test needs.
ensure_base_tools() {
    ensure_tools as:binutils ld:binutils setpriv:util-linux
    command -v cargo >/dev/null 2>&1 || { log "cargo (Rust toolchain) is required"; return 1; }
}

require_kvm() {
    if [ ! -e /dev/kvm ]; then
        log "/dev/kvm is missing: ftvm needs KVM on this host"
        return 1
    fi
}

# wait_for FILE TEXT SECONDS: until FILE contains TEXT (fixed string).
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# trial_workspace PREFIX WHAT: a scratch directory in $work for a script's trials, the
# $pids it starts and its $failed count. On exit every pid is killed; $work is removed if
# nothing failed, else kept and named ("WHAT are kept in ...").
trial_workspace() {
    work=$(mktemp -d "/tmp/$1-XXXXXX")
    pids=()
    failed=0
    kept_what=$2
    trap trial_workspace_cleanup EXIT
}

trial_workspace_cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ "$failed" = 0 ]; then
        rm -rf "$work"
    else
        log "$kept_what are kept in $work"
    fi
}

# median: the median of the numbers on stdin, one per line ("nan" when there are none).
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "nan"}'; }

# stock_net_hosts NAME: what the scripts that run the stock guest with its NIC share (bench-io,
# bench-kv, demo-pair): the release ftvm in $ftvm, the cached net snapshot
# (scripts/stock-net-snapshot.sh), the key/value binaries, simulated hosts named NAME$$ in
# $hosts and a work directory in $work, both removed on exit.
stock_net_hosts() {
    ensure_base_tools
    ensure_tools python3:python3 ping:iputils-ping
    require_kvm
    log "building ftvm (release)"
    cargo build --release --locked -p ftvm
    ftvm=$PWD/target/release/ftvm
    scripts/stock-net-snapshot.sh "$ftvm"
    scripts/build-kv.sh >&2
    hosts=$1$$
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    trap 'scripts/hosts.sh down "$hosts" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    scripts/hosts.sh up "$hosts" >/dev/null
}

# release_ftvm: set $ftvm to FTVM_BIN if given, else build the release binary and use it.
release_ftvm() {
    if [ -n "${FTVM_BIN:-}" ]; then
        ftvm=$FTVM_BIN
    else
        log "building ftvm (release)"
        cargo build --release --locked -q -p ftvm
        ftvm=target/release/ftvm
    fi
}
