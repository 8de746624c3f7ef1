//! `uplinkd --render-ha DIR`: keepalived's and conntrackd's configurations derived from
//! uplinkd's `[ha]`, its links and this router's own addresses, so the three daemons cannot
//! disagree about interfaces, virtual addresses, track files or what is replicated.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use super::Config;

/// A file `--render-ha` writes.
#[derive(Debug)]
pub struct File {
    pub name: &'static str,
    pub text: String,
    /// keepalived runs it (mode 0755; the others are 0644).
    pub executable: bool,
}

/// One of this router's addresses: its interface, the address and its prefix length.
pub type Own = (String, IpAddr, u8);

/// Points a keepalived `track_file` adds per usable link: one link more outweighs the
/// routers' base priorities (which differ by a few points). All links together add at most
/// [`LINKS_WEIGHT`], so a base priority up to 204 stays within keepalived's 254, and both
/// routers (same links) weigh a link alike.
const TRACK_WEIGHT: u32 = 20;
pub const LINKS_WEIGHT: u32 = 50;

/// keepalived.conf, conntrackd.conf and the notify script keepalived runs on a state change
/// (conntrackd's primary-backup actions), for files in `dir`. `own` is every address of this
/// router; `conntrack_max` sizes conntrackd's cache (`DisableExternalCache`: the backup's kernel
/// table holds every replicated flow).
pub fn ha(
    c: &Config,
    own: &[Own],
    conntrack_max: u64,
    dir: &Path,
    source: &Path,
) -> Result<Vec<File>, String> {
    let ha =
        c.ha.as_ref()
            .ok_or("the configuration has no [ha] section")?;
    let IpAddr::V4(lan_vip) = ha.lan_vip else {
        return Err("--render-ha needs an IPv4 ha.lan_vip (one VRRP instance, IPv4)".into());
    };
    let (sync_if, peer) = ha
        .sync
        .as_ref()
        .ok_or("conntrackd's configuration needs ha.sync_interface and ha.sync_peer")?;
    let vips: Vec<Ipv4Addr> = std::iter::once(lan_vip)
        .chain(c.links.iter().filter_map(|l| l.public_vip))
        .collect();
    // This router's own IPv4 addresses (a master holds the virtual ones too: not its own).
    let v4: Vec<(&str, Ipv4Addr, u8)> = own
        .iter()
        .filter_map(|(i, a, len)| match a {
            IpAddr::V4(a) if !vips.contains(a) => Some((i.as_str(), *a, *len)),
            _ => None,
        })
        .collect();
    // A virtual address goes on the interface with an own address in its subnet, with that
    // subnet's prefix length.
    let home = |vip: Ipv4Addr, ifaces: &[&str], what: &str| {
        v4.iter()
            .find(|(i, a, len)| ifaces.contains(i) && same_net(*a, vip, *len))
            .map(|(i, _, len)| (i.to_string(), *len))
            .ok_or_else(|| {
                format!(
                    "{what} {vip}: no address of {} is in its subnet (keepalived needs the \
                     interface and the prefix length)",
                    ifaces.join(", ")
                )
            })
    };
    let lans: Vec<&str> = c.lan_interfaces.iter().map(String::as_str).collect();
    let (lan_if, lan_len) = home(lan_vip, &lans, "ha.lan_vip")?;
    let mut vip_lines = format!("        {lan_vip}/{lan_len} dev {lan_if}\n");
    for l in &c.links {
        if let Some(vip) = l.public_vip {
            let (i, len) = home(
                vip,
                &[l.interface.as_str()],
                &format!("link {:?}'s public_vip", l.name),
            )?;
            let _ = writeln!(vip_lines, "        {vip}/{len} dev {i}");
        }
    }
    let (own_sync, sync_len) = v4
        .iter()
        .find(|(i, _, _)| i == sync_if)
        .map(|(_, a, len)| (*a, *len))
        .ok_or_else(|| format!("ha.sync_interface {sync_if} has no IPv4 address"))?;
    if !same_net(own_sync, *peer, sync_len) {
        return Err(format!(
            "ha.sync_peer {peer} is not in {sync_if}'s subnet {}/{sync_len}",
            net(own_sync, sync_len)
        ));
    }

    let header = format!(
        "Written by `uplinkd --config {} --render-ha {}`.\n\
         Change uplinkd's configuration and render again rather than edit this file.",
        source.display(),
        dir.display()
    );
    let notify = dir.join("notify.sh");
    let conntrackd_conf = dir.join("conntrackd.conf");
    let weight = TRACK_WEIGHT
        .min(LINKS_WEIGHT / c.links.len().max(1) as u32)
        .max(1);
    let keepalived = format!(
        "{comment}\n\
         global_defs {{\n\
        \x20   enable_script_security\n\
        \x20   script_user root\n\
        \x20   vrrp_version 3\n\
        \x20   vrrp_garp_master_delay 1\n\
        \x20   vrrp_garp_master_repeat 3\n\
         }}\n\
         # uplinkd's usable links, after its own hysteresis and damping: the peer with more wins.\n\
         track_file uplinkd_links {{\n\
        \x20   file \"{weight_file}\"\n\
        \x20   weight {weight}\n\
        \x20   init_file 0\n\
         }}\n\
         # 1 when no link is usable or uplinkd is stopped: FAULT, and the peer takes over at once.\n\
         # A router that boots stays in FAULT until uplinkd has a verdict.\n\
         track_file uplinkd_fault {{\n\
        \x20   file \"{fault_file}\"\n\
        \x20   weight 0\n\
        \x20   init_file 1\n\
         }}\n\
         vrrp_instance uplinkd {{\n\
        \x20   state BACKUP\n\
        \x20   interface {lan_if}\n\
        \x20   virtual_router_id {vrid}\n\
        \x20   priority {priority}\n\
        \x20   advert_int {advert}\n\
        \x20   # A master is taken for dead after 2 missed adverts (and the skew, short with a high\n\
        \x20   # priority), not 3: before a stalled TCP sender's second backed-off retransmission\n\
        \x20   # (about 0.85 s after its lost segment), so a talking flow resumes within a second.\n\
        \x20   down_timer_adverts 2\n\
        \x20   # A router that comes back waits before it takes the LAN back: its conntrackd has\n\
        \x20   # resynchronised by then.\n\
        \x20   preempt_delay {preempt}\n\
        \x20   virtual_ipaddress {{\n\
         {vip_lines}\
        \x20   }}\n\
        \x20   track_file {{\n\
        \x20       uplinkd_links\n\
        \x20       uplinkd_fault\n\
        \x20   }}\n\
        \x20   notify \"{notify}\"\n\
         }}\n",
        comment = comment(&header),
        weight_file = ha.weight_file.display(),
        fault_file = ha.fault_file.display(),
        vrid = ha.vrid,
        priority = ha.priority,
        advert = seconds(ha.advert),
        preempt = seconds(ha.preempt_delay),
        notify = notify.display(),
    );

    let script = format!(
        "#!/bin/sh\n\
         {comment}\n\
         # keepalived runs it on every state change (TYPE NAME STATE PRIORITY): conntrackd's\n\
         # primary-backup actions. With DisableExternalCache the commit has nothing to do; the\n\
         # resynchronisations still matter.\n\
         c=\"/usr/sbin/conntrackd -C {conf}\"\n\
         echo \"$(date +%s.%N) $3\" >>\"{states}\"\n\
         case $3 in\n\
         MASTER) $c -c; $c -f; $c -R; $c -B ;;\n\
         BACKUP) $c -t; $c -n ;;\n\
         FAULT) $c -t ;;\n\
         esac\n\
         exit 0\n",
        comment = comment(&header),
        conf = conntrackd_conf.display(),
        states = dir.join("vrrp-states").display(),
    );

    // Flows from or to this router itself (its probes, the LAN talking to it) stay local.
    let mut ignore: Vec<String> = vec!["127.0.0.1".into()];
    ignore.extend(vips.iter().map(Ipv4Addr::to_string));
    for (i, a, _) in &v4 {
        if lans.contains(i) || i == sync_if || c.links.iter().any(|l| l.interface == *i) {
            ignore.push(if i == sync_if {
                format!("{}/{sync_len}", net(*a, sync_len))
            } else {
                a.to_string()
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    ignore.retain(|a| seen.insert(a.clone()));
    let ignore: String = ignore
        .iter()
        .map(|a| format!("            IPv4_address {a}\n"))
        .collect();
    let conntrackd = format!(
        "{comment}\n\
         Sync {{\n\
        \x20   Mode FTFW {{\n\
        \x20       # The replicated flows go straight into the backup's kernel table: a takeover\n\
        \x20       # has nothing to commit, and no packet meets a virtual address without state.\n\
        \x20       DisableExternalCache yes\n\
        \x20       StartupResync yes\n\
        \x20       PurgeTimeout 5\n\
        \x20   }}\n\
        \x20   UDP {{\n\
        \x20       IPv4_address {own_sync}\n\
        \x20       IPv4_Destination_Address {peer}\n\
        \x20       Port 3780\n\
        \x20       Interface {sync_if}\n\
        \x20       SndSocketBuffer 1249280\n\
        \x20       RcvSocketBuffer 1249280\n\
        \x20       Checksum on\n\
        \x20   }}\n\
         }}\n\
         General {{\n\
        \x20   Systemd yes\n\
        \x20   HashSize 32768\n\
        \x20   # Every flow of the kernel table (nf_conntrack_max {conntrack_max}), twice.\n\
        \x20   HashLimit {limit}\n\
        \x20   LogFile {dir}/conntrackd.log\n\
        \x20   Syslog no\n\
        \x20   LockFile {dir}/conntrackd.lock\n\
        \x20   UNIX {{\n\
        \x20       Path {dir}/conntrackd.ctl\n\
        \x20   }}\n\
        \x20   NetlinkBufferSize 2097152\n\
        \x20   NetlinkBufferSizeMaxGrowth 8388608\n\
        \x20   Filter From Userspace {{\n\
        \x20       Protocol Accept {{\n\
        \x20           TCP\n\
        \x20           UDP\n\
        \x20           ICMP\n\
        \x20       }}\n\
        \x20       Address Ignore {{\n\
         {ignore}\
        \x20       }}\n\
        \x20   }}\n\
         }}\n",
        comment = comment(&header),
        limit = conntrack_max.saturating_mul(2).max(65536),
        dir = dir.display(),
    );
    Ok(vec![
        File {
            name: "keepalived.conf",
            text: keepalived,
            executable: false,
        },
        File {
            name: "conntrackd.conf",
            text: conntrackd,
            executable: false,
        },
        File {
            name: "notify.sh",
            text: script,
            executable: true,
        },
    ])
}

fn comment(text: &str) -> String {
    text.lines()
        .map(|l| format!("# {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// keepalived's seconds: "0.3", "5".
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn net(a: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(a) & mask)
}

fn same_net(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    net(a, len) == net(b, len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PAIR: &str = r#"
[[link]]
name = "wan1"
interface = "wan1"
targets = ["203.0.113.10"]
public_vip = "192.0.2.6"

[[link]]
name = "wan2"
interface = "wan2"
targets = ["203.0.113.10"]
public_vip = "198.51.100.6"

[lan]
interfaces = ["lan0"]

[ha]
lan_vip = "10.98.0.1"
priority = 201
sync_interface = "sync0"
sync_peer = "10.98.255.2"
"#;

    fn own(master: bool) -> Vec<Own> {
        let mut v: Vec<Own> = [
            ("lo", "127.0.0.1", 8),
            ("lan0", "10.98.0.2", 24),
            ("wan1", "192.0.2.2", 29),
            ("wan2", "198.51.100.2", 29),
            ("sync0", "10.98.255.1", 30),
            ("mgmt", "172.16.0.5", 24),
            ("lan0", "fd00::1", 64),
        ]
        .into_iter()
        .map(|(i, a, l)| (i.to_string(), a.parse().unwrap(), l))
        .collect();
        if master {
            // keepalived's addresses, first on their interfaces.
            v.insert(1, ("lan0".into(), "10.98.0.1".parse().unwrap(), 24));
            v.insert(0, ("wan1".into(), "192.0.2.6".parse().unwrap(), 32));
        }
        v
    }

    fn render(text: &str, own: &[Own]) -> Result<Vec<File>, String> {
        let c = crate::config::parse(text).map_err(|p| format!("{p:?}"))?;
        ha(
            &c,
            own,
            262_144,
            Path::new("/run/uplinkd-ha"),
            Path::new("/etc/uplinkd/uplinkd.toml"),
        )
    }

    fn file<'a>(files: &'a [File], name: &str) -> &'a str {
        &files.iter().find(|f| f.name == name).unwrap().text
    }

    #[test]
    fn keepalived_gets_the_interfaces_addresses_and_track_files_of_uplinkds_configuration() {
        let files = render(PAIR, &own(false)).unwrap();
        let k = file(&files, "keepalived.conf");
        for want in [
            "vrrp_version 3",
            "file \"/run/uplinkd/vrrp-weight\"\n    weight 20\n    init_file 0",
            "file \"/run/uplinkd/vrrp-fault\"\n    weight 0\n    init_file 1",
            "interface lan0\n    virtual_router_id 51\n    priority 201\n    advert_int 0.3\n",
            "down_timer_adverts 2\n",
            "preempt_delay 5\n",
            "        10.98.0.1/24 dev lan0\n        192.0.2.6/29 dev wan1\n        198.51.100.6/29 dev wan2\n    }",
            "notify \"/run/uplinkd-ha/notify.sh\"",
        ] {
            assert!(k.contains(want), "{want:?} not in\n{k}");
        }
        assert!(k.starts_with("# Written by `uplinkd --config /etc/uplinkd/uplinkd.toml"));
        let n = files.iter().find(|f| f.name == "notify.sh").unwrap();
        assert!(n.executable && n.text.starts_with("#!/bin/sh\n"));
        assert!(n
            .text
            .contains("c=\"/usr/sbin/conntrackd -C /run/uplinkd-ha/conntrackd.conf\""));
        assert!(n.text.contains("MASTER) $c -c; $c -f; $c -R; $c -B ;;"));
    }

    #[test]
    fn conntrackd_syncs_over_the_sync_link_and_ignores_every_own_and_virtual_address() {
        // The same files whether this router is the master (holding the virtual addresses,
        // some of them first on their interface) or not.
        let files = render(PAIR, &own(true)).unwrap();
        assert_eq!(
            file(&files, "conntrackd.conf"),
            file(&render(PAIR, &own(false)).unwrap(), "conntrackd.conf")
        );
        assert_eq!(
            file(&files, "keepalived.conf"),
            file(&render(PAIR, &own(false)).unwrap(), "keepalived.conf")
        );
        let t = file(&files, "conntrackd.conf");
        for want in [
            "DisableExternalCache yes",
            "IPv4_address 10.98.255.1\n        IPv4_Destination_Address 10.98.255.2\n",
            "Interface sync0\n",
            "HashLimit 524288\n",
            "UNIX {\n        Path /run/uplinkd-ha/conntrackd.ctl\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        let ignored: Vec<&str> = t
            .lines()
            .filter_map(|l| l.trim().strip_prefix("IPv4_address "))
            .skip(1) // the sync source address
            .collect();
        assert_eq!(
            ignored,
            [
                "127.0.0.1",
                "10.98.0.1",
                "192.0.2.6",
                "198.51.100.6",
                "10.98.0.2",
                "192.0.2.2",
                "198.51.100.2",
                "10.98.255.0/30"
            ]
        );
    }

    #[test]
    fn what_cannot_be_derived_is_said_plainly() {
        let err = |text: &str, own: &[Own]| render(text, own).unwrap_err();
        assert!(err(
            &PAIR
                .replace("sync_peer = \"10.98.255.2\"\n", "")
                .replace("sync_interface = \"sync0\"\n", ""),
            &own(false)
        )
        .contains("needs ha.sync_interface and ha.sync_peer"));
        let no_sync: Vec<Own> = own(false).into_iter().filter(|o| o.0 != "sync0").collect();
        assert_eq!(
            err(PAIR, &no_sync),
            "ha.sync_interface sync0 has no IPv4 address"
        );
        assert!(
            err(&PAIR.replace("10.98.255.2", "10.98.254.2"), &own(false))
                .contains("is not in sync0's subnet 10.98.255.0/30")
        );
        let e = err(&PAIR.replace("198.51.100.6", "203.0.113.77"), &own(false));
        assert!(
            e.starts_with("link \"wan2\"'s public_vip 203.0.113.77: no address of wan2"),
            "{e}"
        );
        assert!(err(&PAIR.replace("10.98.0.1", "10.97.0.1"), &own(false))
            .starts_with("ha.lan_vip 10.97.0.1: no address of lan0 is in its subnet"));
        let single = PAIR
            .split("[ha]")
            .next()
            .unwrap()
            .replace("public_vip", "# public_vip");
        assert_eq!(
            err(&single, &own(false)),
            "the configuration has no [ha] section"
        );
    }

    #[test]
    fn seconds_are_written_as_keepalived_reads_them() {
        assert_eq!(seconds(Duration::from_millis(300)), "0.3");
        assert_eq!(seconds(Duration::from_millis(1050)), "1.05");
        assert_eq!(seconds(Duration::from_secs(5)), "5");
        assert_eq!(seconds(Duration::ZERO), "0");
    }
}
