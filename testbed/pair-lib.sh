# shellcheck shell=bash
# Two-router testbed: routers ra and rb share a LAN switch and one hand-off switch per ISP, run
# keepalived (VRRPv3) and conntrackd (FTFW over a dedicated link) from Debian, and uplinkd with
# [ha]. Every file of the three daemons lives in the run directory; nothing is started outside
# the namespaces created here, and tb_down removes them on every exit path.
#
#   cli 10.99.0.100 ── [lsw: br0] ── lan0 ra 10.99.0.2 / rb 10.99.0.3, LAN VIP 10.99.0.1
#   ra, rb wan1 100.64.1.2 / .3 ── [wsw: br1] ── isp1 100.64.1.1 ── inet (203.0.113.10-12, server)
#   ra, rb wan2 100.64.2.2 / .3 ── [wsw: br2] ── isp2 100.64.2.1 ──
#   public VIPs (SNAT sources, move with mastership): 100.64.1.6 on wan1, 100.64.2.6 on wan2
#   ra sync0 10.98.255.1 ── rb sync0 10.98.255.2 (conntrackd)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TB_HOSTS="cli lsw wsw ra rb isp1 isp2 inet"
ADVERT=${ADVERT:-0.3}
# Port 8080 flows follow the default policy (wan1 first), port 8082 a policy with wan2 first.
PORT2=8082

pair_deps() {
    local missing=()
    command -v keepalived >/dev/null || missing+=(keepalived)
    command -v conntrackd >/dev/null || missing+=(conntrackd)
    tb_install "${missing[@]}"
}

pair_up() {
    tb_hosts ulp pair
    local h r i
    on lsw ip link add br0 type bridge
    on wsw ip link add br1 type bridge
    on wsw ip link add br2 type bridge
    for h in lsw wsw; do for i in 0 1 2; do on $h ip link set "br$i" up 2>/dev/null; done; done
    # LAN switch ports.
    veth cli eth0 lsw pcli
    on lsw ip link set pcli master br0
    for r in ra rb; do
        veth $r lan0 lsw "p$r"
        on lsw ip link set "p$r" master br0
        for i in 1 2; do
            veth $r "wan$i" wsw "$r$i"
            on wsw ip link set "$r$i" master "br$i"
        done
    done
    for i in 1 2; do
        veth "isp$i" cpe wsw "isp$i"
        on wsw ip link set "isp$i" master "br$i"
        veth "isp$i" core inet "isp$i"
        on "isp$i" ip addr add "100.64.$i.1/29" dev cpe
        on "isp$i" ip addr add "10.20$i.0.1/30" dev core
        on "isp$i" ip route add default via "10.20$i.0.2"
        on "isp$i" sysctl -qw net.ipv4.ip_forward=1
        on inet ip addr add "10.20$i.0.2/30" dev "isp$i"
        on inet ip route add "100.64.$i.0/24" via "10.20$i.0.1"
    done
    veth ra sync0 rb sync0
    local n=2
    for r in ra rb; do
        on $r ip addr add "10.99.0.$n/24" dev lan0
        on $r ip addr add "100.64.1.$n/29" dev wan1
        on $r ip addr add "100.64.2.$n/29" dev wan2
        on $r ip addr add "10.98.255.$((n - 1))/30" dev sync0
        on $r ip route add default via 100.64.1.1 metric 100
        on $r ip route add default via 100.64.2.1 metric 200
        on $r sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2
        n=$((n + 1))
    done
    on cli ip addr add 10.99.0.100/24 dev eth0
    on cli ip route add default via 10.99.0.1
    for a in 203.0.113.10 203.0.113.11 203.0.113.12 $SERVER; do on inet ip addr add $a/32 dev lo; done
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" server $SERVER $PORT >"$TB_TMP/server.log" 2>&1 &
    ip netns exec "$(ns inet)" python3 "$TB_TOOL" server $SERVER $PORT2 >"$TB_TMP/server2.log" 2>&1 &
    tb_wait 5 "server listening" on inet python3 "$TB_TOOL" whoami $SERVER $PORT >/dev/null
    for r in ra rb; do mkdir -p "$TB_TMP/$r"; done
    tb_log "pair testbed $TB_ID up in $TB_TMP"
}

# pair_configs: each router's uplinkd configuration, and keepalived's and conntrackd's rendered
# from it on that router (uplinkd --render-ha), every file in the router's run directory.
pair_configs() {
    local r d prio peer_sync advert_ms
    advert_ms=$(awk -v a="$ADVERT" 'BEGIN { printf "%d", a * 1000 }')
    for r in ra rb; do
        d=$TB_TMP/$r
        if [ $r = ra ]; then prio=201 peer_sync=10.98.255.2; else prio=200 peer_sync=10.98.255.1; fi
        cat >"$d/uplinkd.toml" <<EOT
[[link]]
name = "wan1"
interface = "wan1"
gateway = "100.64.1.1"
targets = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
public_vip = "100.64.1.6"

[[link]]
name = "wan2"
interface = "wan2"
gateway = "100.64.2.1"
priority = 2
targets = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
public_vip = "100.64.2.6"

[lan]
interfaces = ["lan0"]

[[policy]]
name = "wan2-first"
links = ["wan2", "wan1"]

[[rule]]
policy = "wan2-first"
proto = "tcp"
dport = [$PORT2]

[control]
socket = "$d/control.sock"
history = "$d/history.json"

[ha]
lan_vip = "10.99.0.1"
weight_file = "$d/vrrp-weight"
fault_file = "$d/vrrp-fault"
vrid = 99
priority = $prio
advert = "${advert_ms}ms"
preempt_delay = "${PREEMPT_DELAY:-5}s"
sync_interface = "sync0"
sync_peer = "$peer_sync"
EOT
        on $r "$UPLINKD" --config "$d/uplinkd.toml" --render-ha "$d" >"$d/render.out" 2>&1 ||
            tb_die "$r: uplinkd --render-ha failed: $(cat "$d/render.out")"
    done
}

# pair_start ROUTER: conntrackd, uplinkd and keepalived on ROUTER, in that order (keepalived
# finds uplinkd's track files).
pair_start() {
    local r=$1 d=$TB_TMP/$1
    # Started from subshells: not jobs of this shell, which would report their deaths.
    (ip netns exec "$(ns "$r")" conntrackd -C "$d/conntrackd.conf" >>"$d/conntrackd.out" 2>&1 &)
    (ip netns exec "$(ns "$r")" "$UPLINKD" --config "$d/uplinkd.toml" >>"$d/uplinkd.log" 2>&1 &)
    tb_wait 10 "$r: uplinkd wrote its track files" test -s "$d/vrrp-fault"
    (ip netns exec "$(ns "$r")" keepalived -n -l -D -G -P -f "$d/keepalived.conf" \
        -p "$d/keepalived.pid" -r "$d/vrrp.pid" -c "$d/checkers.pid" -b "$d/bfd.pid" \
        >>"$d/keepalived.out" 2>&1 &)
}

# pair_ctl ROUTER ARGS...: uplinkctl against ROUTER's uplinkd.
pair_ctl() { local r=$1; shift; "$UPLINKCTL" --socket "$TB_TMP/$r/control.sock" "$@"; }
# pair_json ROUTER EXPR: a Python expression over ROUTER's status `s`.
pair_json() {
    pair_ctl "$1" status --json 2>/dev/null | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}
# pair_role_is ROUTER ROLE: uplinkd on ROUTER says it is the ROLE.
pair_role_is() { [ "$(pair_json "$1" "s['ha']['role']" 2>/dev/null)" = "$2" ]; }
# has_vip ROUTER: ROUTER holds the LAN virtual address.
has_vip() { on "$1" ip -o addr show dev lan0 | grep -q ' 10.99.0.1/'; }

# pair_hold NAME PORT: a talking connection from the client (see tb.py hold).
pair_hold() {
    ip netns exec "$(ns cli)" python3 "$TB_TOOL" hold $SERVER "$2" --talk --within "${HOLD_SECS:-25}" \
        >"$TB_TMP/hold.$1" 2>&1 &
    tb_wait 5 "connection $1 up" grep -qs '^seen' "$TB_TMP/hold.$1"
}

# pair_kill ROUTER: the router dies: its LAN, WAN and sync ports go down, its daemons are killed.
pair_kill() {
    local r=$1 i
    for i in lan0 wan1 wan2 sync0; do on "$r" ip link set "$i" down; done
    local pids; pids=$(ip netns pids "$(ns "$r")")
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null
}
