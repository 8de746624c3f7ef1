//! The validated configuration, with defaults filled in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use uplinkd_probes::Target;

/// Default control socket (DESIGN.md §4).
pub const DEFAULT_SOCKET: &str = "/run/uplinkd/control.sock";
/// The unit's state directory (StateDirectory=uplinkd): survives reboots.
pub const DEFAULT_HISTORY: &str = "/var/lib/uplinkd/history.json";

/// A validated configuration. Everything the daemon needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Links in configuration order; index = link id everywhere in the daemon.
    pub links: Vec<Link>,
    pub lan_interfaces: Vec<String>,
    /// Steering policies; index 0 is always the default policy (configured as `name =
    /// "default"`, or implicitly every link with its own priority and weight).
    pub policies: Vec<Policy>,
    /// Traffic rules in file order: the first that matches a new flow picks its policy.
    pub rules: std::sync::Arc<Vec<Rule>>,
    pub control: Control,
    pub metrics: Metrics,
    pub hooks: Hooks,
    pub probe: Probe,
    pub detection: Detection,
    pub dataplane: DataplaneOptions,
    /// Two routers in a keepalived + conntrackd pair (`[ha]`); `None`: a single router.
    pub ha: Option<Ha>,
}

/// `[ha]`: this router is one of two that share the LAN and the WAN hand-offs. keepalived
/// elects the master and moves the virtual addresses, conntrackd replicates the flows; uplinkd
/// tells keepalived how healthy its links are and acts on flows only while it is the master.
#[derive(Debug, Clone, PartialEq)]
pub struct Ha {
    /// The LAN gateway's virtual address: this router is the master while it is one of its own.
    pub lan_vip: IpAddr,
    /// keepalived `track_file`s, each replaced by rename: how many links are usable, and 1
    /// when none is or uplinkd is stopped (0 otherwise).
    pub weight_file: PathBuf,
    pub fault_file: PathBuf,
    /// How long a master holds back the purge of a dead link's flows: keepalived may hand the
    /// LAN to the peer meanwhile (its links weigh more now), and the flows live on there.
    pub handover: std::time::Duration,
    /// What `uplinkd --render-ha` writes into keepalived's configuration: the VRRP instance's
    /// id, this router's base priority (the preferred master's is higher), the advert
    /// interval and how long a returning router waits before it takes the LAN back.
    pub vrid: u8,
    pub priority: u8,
    pub advert: std::time::Duration,
    pub preempt_delay: std::time::Duration,
    /// conntrackd's dedicated link to the peer, and the peer's address on it (`None`: not
    /// configured; `--render-ha` needs both).
    pub sync: Option<(String, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub interface: String,
    /// `None`: learned from the kernel (a default route via this interface in the main table).
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 next hop (link-local or global). `None`: the main table's IPv6 default route via
    /// this interface, if any (router advertisements put one there).
    pub gateway6: Option<Ipv6Addr>,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of new flows among usable links of the same priority (1 ..= 1000).
    pub weight: u32,
    /// What to probe through this link (see `uplinkd_probes::Target` for the syntax).
    pub targets: Vec<Target>,
    /// Number of silent targets that make this link down (1 ..= targets).
    pub quorum: u32,
    /// What happens to this link's flows when new flows move back to a preferred link.
    pub failback: Failback,
    /// IPv6 leaving through this link gets its source prefix translated to this prefix
    /// (NPTv6-style, the interface identifier kept) instead of being masqueraded.
    pub nptv6: Option<Prefix>,
    /// With `[ha]`: the shared public address (a keepalived virtual address on the WAN
    /// hand-off) that IPv4 leaving this link is translated to, so the peer can carry the flow
    /// after a takeover. `None`: the link's own address.
    pub public_vip: Option<Ipv4Addr>,
    /// Mark value of this link under [`DataplaneOptions::mark_mask`] (from
    /// [`super::fence::allocate`]).
    pub mark: u32,
    /// Routing table holding this link's default route (from [`super::fence::allocate`]).
    pub table: u32,
}

/// What happens to a link's flows when a preferred link recovers and new flows move back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// They stay (the default): nothing is interrupted that works.
    #[default]
    Keep,
    /// They are reset (like a dead link's), so clients reconnect through the preferred link:
    /// for a metered or slow backup.
    Drain,
}

/// Name of the policy for traffic no rule matches (DESIGN.md: the default policy).
pub const DEFAULT_POLICY: &str = "default";

/// A named steering policy: which links carry the traffic given to it, in tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub members: Vec<Member>,
    pub last_resort: LastResort,
    /// Remember the link each source address was given for this long after its last new flow,
    /// and give its new flows the same link while it is usable.
    pub sticky: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub link: usize,
    /// Lower is preferred; members of equal priority share by weight.
    pub priority: u32,
    pub weight: u32,
}

/// What happens to a policy's new flows when none of its links is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastResort {
    /// The default policy takes them (for the default policy itself: its preferred link,
    /// as if uplinkd were not there).
    #[default]
    Default,
    /// They are refused at once (ICMP network unreachable, ENETUNREACH on the router), so
    /// clients see an error instead of a timeout.
    Unreachable,
}

/// Which new flows go to a policy. Every non-empty list must match (any of its entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Index into [`Config::policies`].
    pub policy: usize,
    /// LAN interfaces the flow enters by; empty: any (and the router's own traffic).
    pub iif: Vec<String>,
    /// IP protocol number (`meta l4proto`).
    pub proto: Option<u8>,
    pub src: Vec<Prefix>,
    pub dst: Vec<Prefix>,
    /// Inclusive port ranges (TCP and UDP only).
    pub sport: Vec<(u16, u16)>,
    pub dport: Vec<(u16, u16)>,
}

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The address bytes and the netmask bytes (network order).
    pub fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let addr = match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let bits = addr.len() * 8;
        let mask: Vec<u8> = (0..addr.len())
            .map(|i| {
                let on = (usize::from(self.len)).saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - on)) as u8
            })
            .collect();
        debug_assert_eq!(bits % 8, 0);
        (addr, mask)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    /// `ADDR/LEN`, or a bare address (a host). Host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or ADDR/LEN prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = if l.is_empty() {
            max
        } else {
            l.parse()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
        };
        let p = Prefix { addr, len };
        let (first, _) = p.range();
        let bits = Prefix::host(addr).range().0;
        if first != bits {
            let net = match addr {
                IpAddr::V4(_) => IpAddr::from(Ipv4Addr::from(first as u32)),
                IpAddr::V6(_) => IpAddr::from(Ipv6Addr::from(first)),
            };
            return Err(format!(
                "{s:?} has host bits set; did you mean \"{net}/{len}\"?"
            ));
        }
        Ok(p)
    }
}

impl Prefix {
    /// The first and the last address of the prefix, as numbers (an IPv4 address in the low
    /// 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let (n, width) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = width - u32::from(self.len).min(width);
        let host = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
        (n & !host, n | host)
    }

    /// A single address.
    pub fn host(addr: IpAddr) -> Self {
        Prefix {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// For NPTv6: the prefix as an IPv6 network.
    pub fn v6(&self) -> Option<Ipv6Addr> {
        match self.addr {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub socket: PathBuf,
    /// Group allowed to read status (the socket is owner root, mode 0660).
    pub group: Option<String>,
    /// Its numeric id, resolved when the configuration is loaded.
    pub gid: Option<u32>,
    /// Where the links' quality history and outages are kept across restarts; `None`: in
    /// memory only.
    pub history: Option<PathBuf>,
}

/// Commands run on every link transition, with the details in the environment (UPLINKD_EVENT,
/// UPLINKD_LINK, UPLINKD_INTERFACE, UPLINKD_FROM, UPLINKD_TO, UPLINKD_REASON, UPLINKD_STEER_TO).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hooks {
    /// Program and arguments (no shell); empty: no hook.
    pub on_transition: Vec<String>,
    /// A hook still running after this is killed.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    /// Address of the Prometheus HTTP listener; none by default.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Calm time between probe rounds while every target answers; each round probes every
    /// target of a link concurrently.
    pub interval: Duration,
    /// Time between rounds after a probe was lost, until every target answers again: a real
    /// outage is confirmed quickly while steady-state probe traffic stays low.
    pub fast_interval: Duration,
    /// A reply later than this counts as lost.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Consecutive lost probes after which a target counts as silent.
    pub misses: u32,
    /// Silent targets that make a link down; `None`: all of its targets. Per link it can be
    /// overridden; the resolved value is [`Link::quorum`].
    pub quorum: Option<u32>,
    /// Consecutive good rounds (fewer than `quorum` targets unanswered) before a down link is
    /// used again.
    pub up_after: u32,
    /// A down link must also have been good for this long, multiplied by `2^penalty`, where the
    /// penalty grows by one with each down transition and halves every `flap_half_life`.
    pub stable_time: Duration,
    pub flap_half_life: Duration,
    /// Upper bound of the flap-damped hold time.
    pub max_hold: Duration,
    /// An up link whose recent loss reaches this percentage is `degraded` (usable, less
    /// preferred); it is `up` again below half of it.
    pub degraded_loss_pct: u32,
    /// An up link whose smoothed RTT reaches this is `degraded`; `up` again below 80 % of it.
    pub degraded_rtt: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataplaneOptions {
    /// Bits of the packet and conntrack mark that belong to uplinkd; other bits are preserved.
    pub mark_mask: u32,
    /// First of the routing tables uplinkd owns (see [`super::fence::allocate`]).
    pub table_base: u32,
    /// Priority of the first `ip rule` of uplinkd's band (the whole band is listed in the README).
    pub rule_priority: u32,
    /// The router's own new flows follow the policies (and the default policy's link at route
    /// lookup). `false`: they follow the main table, e.g. under a wg-quick full tunnel.
    pub steer_router: bool,
    /// Remove the nft table, rules and routes on stop. `false` leaves the dataplane in place so
    /// traffic keeps flowing while the daemon is restarted.
    pub cleanup_on_exit: bool,
}

impl Config {
    /// The links' names, in configuration order.
    pub fn link_names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }

    /// Worst-case time from a silent blackhole to a `down` decision with these settings. The
    /// first probe lost to the blackhole may be sent up to one calm `interval` after it and is
    /// known lost one `timeout` later; probing then switches to `fast_interval` at once, and the
    /// remaining `misses - 1` probes are sent `fast_interval` apart, the last known lost one
    /// `timeout` after it was sent. Every target is probed in the same rounds, so the quorum
    /// does not add time.
    pub fn worst_case_detection(&self) -> Duration {
        let p = &self.probe;
        let confirm = match self.detection.misses {
            0 | 1 => Duration::ZERO,
            m => p.timeout + p.fast_interval * (m - 2),
        };
        p.interval + p.timeout + confirm
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// From 1; 0 when the problem is with the whole file (it cannot be read).
    pub line: usize,
    /// TOML path, e.g. `link[1].targets`.
    pub key: String,
    pub message: String,
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One line per problem, `FILE:LINE: KEY: MESSAGE`, written at once: stderr is unbuffered,
    /// and 200k problems written piece by piece took a second of system calls.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let mut out = String::new();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            if p.line == 0 {
                write!(out, "{}: ", self.file.display())?;
            } else {
                write!(out, "{}:{}: ", self.file.display(), p.line)?;
            }
            if !p.key.is_empty() {
                write!(out, "{}: ", p.key)?;
            }
            out.push_str(&p.message);
        }
        f.write_str(&out)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Result<Prefix, String> {
        s.parse()
    }

    #[test]
    fn a_prefix_spans_its_first_to_its_last_address() {
        assert_eq!(
            p("10.1.2.0/24").unwrap().range(),
            (0x0a01_0200, 0x0a01_02ff)
        );
        assert_eq!(p("10.1.2.3").unwrap().range(), (0x0a01_0203, 0x0a01_0203));
        assert_eq!(p("0.0.0.0/0").unwrap().range(), (0, 0xffff_ffff));
        assert_eq!(p("::/0").unwrap().range(), (0, u128::MAX));
        assert_eq!(p("2001:db8::1").unwrap().range().1, 0x2001_0db8 << 96 | 1);
        assert_eq!(
            p("2001:db8::/32").unwrap().range(),
            (0x2001_0db8 << 96, 0x2001_0db8 << 96 | (u128::MAX >> 32))
        );
    }

    #[test]
    fn host_bits_are_refused_with_the_network_to_use() {
        assert!(p("10.1.2.3/24")
            .unwrap_err()
            .contains("did you mean \"10.1.2.0/24\""));
        assert!(p("2001:db8::1/64")
            .unwrap_err()
            .contains("did you mean \"2001:db8::/64\""));
        assert!(p("128.0.0.0/1").is_ok());
        assert!(p("10.0.0.0/33").unwrap_err().contains("0..=32"));
    }
}
