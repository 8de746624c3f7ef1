# shellcheck shell=bash
# Testbed library: a network-namespace topology with a LAN host, a router running the real
# uplinkd, two ISPs and an "internet" with probe targets and a TCP server.
#
#   lan (10.99.0.2) ── lan0 [rtr] wan1 ── isp1 ── inet: 203.0.113.10-12 (ICMP targets)
#                                 wan2 ── isp2 ──       198.51.100.10: :8080 TCP server that
#                                                       reports the client's address, :8081 HTTP,
#                                                       :53 DNS (for the other probe kinds),
#                                                       UDP :8080 answers "seen ADDR"
#   IPv6 too: LAN fd00:99::/64, WANs 2001:db8:1::2 and 2001:db8:2::2, targets
#   2001:db8:ff::10-12, TCP server [2001:db8:ff::20]:8080.
#
# Every namespace name carries a per-run id; tb_down removes all of them and is installed as an
# EXIT trap by tb_up, so nothing is left behind on any exit path. No traffic leaves the
# namespaces created here.

TB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB_TOOL="$TB_ROOT/testbed/tools/tb.py"
# The binaries under test: this tree's debug build unless UPLINKD / UPLINKCTL name others (e.g.
# another version's build, to show a scenario fails there).
UPLINKD=${UPLINKD:-$TB_ROOT/target/debug/uplinkd}
UPLINKCTL=${UPLINKCTL:-$TB_ROOT/target/debug/uplinkctl}
SERVER=198.51.100.10
SERVER6=2001:db8:ff::20
PORT=8080
WAN1_ADDR=100.64.1.2
WAN2_ADDR=100.64.2.2
# The testbed's hosts (network namespaces), removed by tb_down.
TB_HOSTS="rtr lan isp1 isp2 inet"

tb_log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
tb_die() { tb_log "FATAL: $*"; exit 1; }
now_ms() { date +%s%3N; }

# Install what the testbed needs on a Debian machine (as root), if missing.
tb_deps() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v conntrack >/dev/null || missing+=(conntrack)
    # (a scenario adds a masquerade the way iptables-nft does)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v python3 >/dev/null || missing+=(python3)
    # (certificates for the HTTPS probes' server; the system's CA store HTTPS probes use)
    command -v openssl >/dev/null || missing+=(openssl)
    dpkg -s ca-certificates >/dev/null 2>&1 || missing+=(ca-certificates)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    dpkg -s libnftnl-dev >/dev/null 2>&1 || missing+=(libnftnl-dev)
    dpkg -s libmnl-dev >/dev/null 2>&1 || missing+=(libmnl-dev)
    # (headless, it loads the status page in a scenario)
    command -v chromium >/dev/null || missing+=(chromium)
    tb_install "${missing[@]}"
    command -v cargo >/dev/null || tb_die "cargo not found: install a Rust toolchain (https://rustup.rs)"
}

# tb_install PKG...: install Debian packages, none of whose services may start on the host:
# policy-rc.d refuses every start for the duration of the install (an existing one is kept).
tb_install() {
    [ $# -gt 0 ] || return 0
    tb_log "installing: $*"
    local rcd=/usr/sbin/policy-rc.d ours=
    if [ ! -e "$rcd" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod +x "$rcd" && ours=1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    local rc=$?
    [ -z "$ours" ] || rm -f "$rcd"
    [ $rc = 0 ] || tb_die "apt-get install $* failed"
}

tb_build() {
    (cd "$TB_ROOT" && cargo build -q --bins) || tb_die "cargo build failed"
}

# ns NAME: the full namespace name of a testbed host.
ns() { echo "${TB_ID}-$1"; }
# on HOST CMD...: run CMD inside a testbed host, with a timeout so nothing hangs forever.
on() { local h=$1; shift; timeout 60 ip netns exec "$(ns "$h")" "$@"; }

veth() { # veth HOST_A IF_A HOST_B IF_B
    ip link add "$2" netns "$(ns "$1")" type veth peer name "$4" netns "$(ns "$3")"
    on "$1" ip link set "$2" up
    on "$3" ip link set "$4" up
}

# tb_hosts PREFIX NAME: a run id (PREFIX, random, pid), a run directory /tmp/uplinkd-NAME.*,
# teardown on every exit path, and the namespaces of $TB_HOSTS with loopback up.
tb_hosts() {
    [ "$(id -u)" = 0 ] || tb_die "the testbed needs root (network namespaces)"
    TB_ID="$1$(printf '%04x' $((RANDOM % 65536)))$$"
    TB_TMP=$(mktemp -d "/tmp/uplinkd-$2.XXXXXX")
    trap tb_down EXIT
    trap 'exit 130' INT TERM
    local h
    for h in $TB_HOSTS; do ip netns add "$(ns $h)"; on $h ip link set lo up; done
}

tb_up() {
    tb_hosts ulk testbed
    veth lan eth0 rtr lan0
    veth rtr wan1 isp1 cpe
    veth rtr wan2 isp2 cpe
    veth isp1 core inet isp1
    veth isp2 core inet isp2

    on lan ip addr add 10.99.0.2/24 dev eth0
    on lan ip route add default via 10.99.0.1

    on rtr ip addr add 10.99.0.1/24 dev lan0
    on rtr ip addr add $WAN1_ADDR/30 dev wan1
    on rtr ip addr add $WAN2_ADDR/30 dev wan2
    # As DHCP would leave them: one default route per WAN in the main table.
    on rtr ip route add default via 100.64.1.1 metric 100
    on rtr ip route add default via 100.64.2.1 metric 200
    on rtr sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2

    for i in 1 2; do
        on isp$i ip addr add 100.64.$i.1/30 dev cpe
        on isp$i ip addr add 10.20$i.0.1/30 dev core
        on isp$i ip route add default via 10.20$i.0.2
        on isp$i sysctl -qw net.ipv4.ip_forward=1
        on inet ip addr add 10.20$i.0.2/30 dev isp$i
        on inet ip route add 100.64.$i.0/24 via 10.20$i.0.1
    done
    for a in 203.0.113.10 203.0.113.11 203.0.113.12 $SERVER; do on inet ip addr add $a/32 dev lo; done

    # IPv6 alongside (probe targets 2001:db8:ff::10-12): documentation prefixes, no DAD delays.
    local h6
    for h6 in lan rtr isp1 isp2 inet; do on $h6 sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0; done
    on rtr sysctl -qw net.ipv6.conf.all.forwarding=1
    for i in 1 2; do
        on rtr ip -6 addr add 2001:db8:$i::2/64 dev wan$i nodad
        on isp$i ip -6 addr add 2001:db8:$i::1/64 dev cpe nodad
        on isp$i ip -6 addr add 2001:db8:20$i::1/64 dev core nodad
        on isp$i ip -6 route add default via 2001:db8:20$i::2
        on isp$i sysctl -qw net.ipv6.conf.all.forwarding=1
        on inet ip -6 addr add 2001:db8:20$i::2/64 dev isp$i nodad
        on inet ip -6 route add 2001:db8:$i::/64 via 2001:db8:20$i::1
        on rtr ip -6 route add default via 2001:db8:$i::1 dev wan$i metric ${i}00
    done
    for a in 2001:db8:ff::10 2001:db8:ff::11 2001:db8:ff::12 $SERVER6; do on inet ip -6 addr add $a/128 dev lo; done
    on lan ip -6 addr add fd00:99::2/64 dev eth0 nodad
    on lan ip -6 route add default via fd00:99::1
    on rtr ip -6 addr add fd00:99::1/64 dev lan0 nodad
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" server $SERVER6 $PORT >"$TB_TMP/server6.log" 2>&1 &
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" server $SERVER $PORT >"$TB_TMP/server.log" 2>&1 &
    # Services for the TCP, HTTP and DNS probe kinds.
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" http $SERVER 8081 >"$TB_TMP/http.log" 2>&1 &
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" dns $SERVER 53 >"$TB_TMP/dns.log" 2>&1 &
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" udpserver $SERVER $PORT >"$TB_TMP/udp.log" 2>&1 &
    tb_wait 5 "server listening" on inet python3 "$TB_TOOL" whoami $SERVER $PORT >/dev/null 2>&1
    tb_wait 5 "IPv6 server listening" on inet python3 "$TB_TOOL" whoami $SERVER6 $PORT >/dev/null 2>&1
    tb_link_ids
    tb_log "testbed $TB_ID up (wan1: mark $MARK1, table $TABLE1; wan2: mark $MARK2, table $TABLE2)"
}

# tb_link_ids: MARK1/TABLE1 and MARK2/TABLE2, the mark and routing table the binary under test
# gives links named wan1 and wan2 (they follow the name), as `uplinkd --check-config` prints them.
tb_link_ids() {
    local out f=$TB_TMP/ids.toml
    printf '[[link]]\nname = "%s"\ninterface = "%s"\ntargets = ["203.0.113.10"]\n' wan1 wan1 wan2 wan2 >"$f"
    printf '[lan]\ninterfaces = ["lan0"]\n' >>"$f"
    out=$("$UPLINKD" --check-config "$f") || tb_die "uplinkd --check-config $f: $out"
    read -r MARK1 TABLE1 < <(sed -n 's/^  link wan1: .*, mark \(0x[0-9a-f]*\), table \([0-9]*\)$/\1 \2/p' <<<"$out")
    read -r MARK2 TABLE2 < <(sed -n 's/^  link wan2: .*, mark \(0x[0-9a-f]*\), table \([0-9]*\)$/\1 \2/p' <<<"$out")
    [ -n "${TABLE1:-}" ] && [ -n "${TABLE2:-}" ] || tb_die "no link ids in: $out"
}

tb_down() {
    local rc=$?
    [ -n "${TB_ID:-}" ] || return $rc
    local h pids
    for h in $TB_HOSTS; do
        pids=$(ip netns pids "$(ns $h)" 2>/dev/null)
        # SIGTERM first so uplinkd can clean up, then make sure.
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    sleep 0.3
    for h in $TB_HOSTS; do
        pids=$(ip netns pids "$(ns $h)" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$(ns $h)" 2>/dev/null
    done
    [ -n "${TB_KEEP_TMP:-}" ] || rm -rf "$TB_TMP"
    TB_ID=
    return $rc
}

# tb_wait SECONDS WHAT CMD...: retry CMD every 20 ms until it succeeds; fail after SECONDS.
tb_wait() {
    local limit=$1 what=$2; shift 2
    local end=$(( $(now_ms) + limit * 1000 ))
    until "$@"; do
        if [ "$(now_ms)" -gt "$end" ]; then
            tb_log "timed out after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 0.02
    done
}

# tb_config [EXTRA]: write the router's uplinkd config; EXTRA is appended verbatim.
# TB_WAN1_GW= (empty) leaves WAN1's gateway to be learned from the main table; TB_WAN2_GW sets
# WAN2's (learned by default); TB_WAN1_TARGETS replaces WAN1's targets (a TOML array).
tb_config() {
    local gw=${TB_WAN1_GW-100.64.1.1} gwline=
    local targets=${TB_WAN1_TARGETS:-'["203.0.113.10", "203.0.113.11", "203.0.113.12"]'}
    [ -z "$gw" ] || gwline="gateway = \"$gw\""
    local gw2line=
    [ -z "${TB_WAN2_GW:-}" ] || gw2line="gateway = \"$TB_WAN2_GW\""
    cat >"$TB_TMP/uplinkd.toml" <<EOT
[[link]]
name = "wan1"
interface = "wan1"
$gwline
priority = 1
weight = ${TB_WAN1_WEIGHT:-1}
targets = $targets

[[link]]
name = "wan2"
interface = "wan2"
$gw2line
priority = ${TB_WAN2_PRIORITY:-2}
failback = "${TB_WAN2_FAILBACK:-keep}"
targets = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]

[lan]
interfaces = ["lan0"]

[control]
socket = "$TB_TMP/control.sock"
history = "$TB_TMP/history.json"
${TB_CONFIG_EXTRA:-}
${1:-}
EOT
}

# tb_launch: run the real uplinkd in the router namespace (its pid in UPLINKD_PID), without
# waiting for anything.
tb_launch() {
    [ -f "$TB_TMP/uplinkd.toml" ] || tb_config
    # shellcheck disable=SC2086 # UPLINKD_ARGS holds extra arguments
    ip netns exec "$(ns rtr)" "$UPLINKD" ${UPLINKD_ARGS:-} --config "$TB_TMP/uplinkd.toml" >>"$TB_TMP/uplinkd.log" 2>&1 &
    UPLINKD_PID=$!
}

# tb_start: tb_launch, then wait until uplinkd answers and both links are up.
tb_start() {
    tb_launch
    tb_wait 10 "uplinkd answers and both links are up" tb_all_up || { cat "$TB_TMP/uplinkd.log" >&2; return 1; }
}

# tb_stop [SIGNAL]: stop uplinkd and wait for it to exit.
tb_stop() {
    kill -"${1:-TERM}" "$UPLINKD_PID" 2>/dev/null
    local i
    for i in $(seq 100); do kill -0 "$UPLINKD_PID" 2>/dev/null || break; sleep 0.05; done
    wait "$UPLINKD_PID" 2>/dev/null
}

ctl() { "$UPLINKCTL" --socket "$TB_TMP/control.sock" "$@"; }

# jq-free JSON access: tb_json EXPR evaluates a Python expression over the status object `s`.
tb_json() {
    ctl status --json 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
link_state() { tb_json "[l['state'] for l in s['links'] if l['name']=='$1'][0]"; }
link_since() { tb_json "[l['since'] for l in s['links'] if l['name']=='$1'][0]"; }
tb_all_up() { [ "$(tb_json "' '.join(l['state'] for l in s['links'])" 2>/dev/null)" = "up up" ]; }
state_is() { [ "$(link_state "$1" 2>/dev/null)" = "$2" ]; }

# Faults, injected on the ISP side only.
blackhole() { on "isp$1" nft -f - <<<"table inet fault { chain blackhole { type filter hook forward priority 0; policy drop; }; }" || tb_die "cannot inject fault: blackhole"; }
unblackhole() { on "isp$1" nft delete table inet fault; }
# random_loss N PCT: ISP N drops PCT % of the packets it forwards towards the internet.
random_loss() { on "isp$1" nft -f - <<<"table inet loss { chain drop_some { type filter hook forward priority 0; oifname \"core\" numgen random mod 100 < $2 drop; }; }" || tb_die "cannot inject fault: random_loss"; }
# dead_target N ADDR: ISP N drops everything to ADDR (one probe target stops answering).
dead_target() { on "isp$1" nft -f - <<<"table inet target { chain drop_some { type filter hook forward priority 0; ip daddr $2 drop; }; }" || tb_die "cannot inject fault: dead_target"; }
# transitions LINK STATE: how many times uplinkd logged LINK entering STATE.
transitions() { grep -c "link $1: [a-z]* -> $2 " "$TB_TMP/uplinkd.log"; }
carrier() { on "isp$1" ip link set cpe "$2"; }

# hold NAME [--talk] [--within S] [--bind ADDR]: keep a connection from the LAN host (or from
# $HOLD_HOST) in the background; its report goes to $TB_TMP/hold.NAME (see tb.py hold).
hold() {
    local name=$1; shift
    ip netns exec "$(ns "${HOLD_HOST:-lan}")" python3 "$TB_TOOL" hold "${HOLD_SERVER:-$SERVER}" $PORT "$@" >"$TB_TMP/hold.$name" 2>&1 &
    tb_wait 5 "connection $name up" grep -qs '^seen' "$TB_TMP/hold.$name"
}
# held NAME WORD: the held connection NAME ended with WORD (reset, closed, alive, ...).
held() { grep -q "^$2" "$TB_TMP/hold.$1"; }
# held_at NAME: wall-clock time (ms) at which the held connection ended.
held_at() { awk 'NR == 2 { printf "%.0f", $2 * 1000 }' "$TB_TMP/hold.$1"; }

whoami() { on lan python3 "$TB_TOOL" whoami $SERVER $PORT --timeout "${1:-2}"; }
whoami6() { on lan python3 "$TB_TOOL" whoami $SERVER6 $PORT --timeout "${1:-2}"; }

# ms_between EPOCH_SECONDS_FLOAT EPOCH_MS: milliseconds from the second to the first.
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a * 1000 - b }'; }

# measure_failover FAULT: inject FAULT on ISP1 ("blackhole" or "carrier") while a LAN client
# opens a new connection every FAILOVER_EVERY seconds (default 0.01). Sets DETECT_MS (fault →
# uplinkd's decision, from the decision time uplinkd reports) and FLOW_MS (decision → the first
# new connection that the server saw from WAN2's address has its answer at the client; it
# carries up to FAILOVER_EVERY of polling). Leaves WAN1 faulty.
measure_failover() {
    on lan python3 "$TB_TOOL" until $SERVER $PORT --want $WAN2_ADDR --every "${FAILOVER_EVERY:-0.01}" \
        --within 10 >"$TB_TMP/until" &
    local until_pid=$! t0
    sleep 0.3
    t0=$(now_ms)
    case $1 in
        blackhole) blackhole 1 ;;
        carrier) carrier 1 down ;;
    esac
    tb_wait 10 "wan1 down" state_is wan1 down || return 1
    wait $until_pid
    local since first
    since=$(link_since wan1)
    first=$(cat "$TB_TMP/until")
    [ "$first" != timeout ] || { tb_log "no connection via WAN2"; return 1; }
    DETECT_MS=$(ms_between "$since" "$t0")
    FLOW_MS=$(awk -v a="$first" -v b="$since" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
}

# heal FAULT: undo measure_failover's fault and wait until WAN1 is up again.
heal() {
    case $1 in
        blackhole) unblackhole 1 ;;
        carrier) carrier 1 up ;;
    esac
    tb_wait 10 "wan1 up" state_is wan1 up
}
