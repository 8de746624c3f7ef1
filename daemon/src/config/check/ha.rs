//! `[ha]` and the links' `public_vip`: two routers in a keepalived + conntrackd pair.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawHa, RawLink};
use crate::config::{Ha, Link};

/// Where keepalived's track files go by default: the unit's runtime directory.
pub const WEIGHT_FILE: &str = "/run/uplinkd/vrrp-weight";
pub const FAULT_FILE: &str = "/run/uplinkd/vrrp-fault";
/// keepalived settings `--render-ha` writes unless `[ha]` says otherwise: VRRPv3 adverts every
/// 300 ms (a dead master is replaced in about 1 s), and a returning router waits 5 s (its
/// conntrackd has resynchronised by then) before it takes the LAN back. A master whose link
/// died waits `handover`, by default 5 adverts (1.5 s), before it resets that link's flows:
/// keepalived moves mastership in 3 adverts and the skew (less than one) when the peer's links
/// weigh more, and the flows live on there.
pub const VRID: u8 = 51;
/// High: VRRPv3's skew is (256 - priority) / 256 adverts, so a backup at 200 and more waits
/// a fifth of an advert beyond the master-down time, not half of one.
pub const PRIORITY: u8 = 200;
pub const ADVERT: Duration = Duration::from_millis(300);
pub const PREEMPT_DELAY: Duration = Duration::from_secs(5);

/// `[ha]`, checked against the links (their `public_vip` needs it, and no two may share one).
pub(super) fn ha(
    c: &mut Checker,
    raw: Option<&Spanned<RawHa>>,
    raw_links: &[Spanned<RawLink>],
    links: &[Link],
) -> Option<Ha> {
    let mut vips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for (i, (rl, l)) in raw_links.iter().zip(links).enumerate() {
        let (Some(span), Some(vip)) = (rl.get_ref().public_vip.as_ref(), l.public_vip) else {
            continue;
        };
        let key = format!("link[{i}].public_vip");
        if raw.is_none() {
            c.err(
                span.span(),
                &key,
                "a shared public address needs an [ha] section (two routers)",
            );
        }
        if let Some(other) = vips.insert(vip, &l.name) {
            c.err(
                span.span(),
                &key,
                format!("{vip} is link {other:?}'s public_vip too"),
            );
        }
    }
    let raw = raw?.get_ref();
    let lan_vip = match raw.lan_vip.get_ref().parse::<IpAddr>() {
        Ok(a) if unicast(a) => Some(a),
        Ok(_) => {
            c.err(
                raw.lan_vip.span(),
                "ha.lan_vip",
                "must be a unicast address (the LAN gateway's virtual address)",
            );
            None
        }
        Err(_) => {
            c.err(
                raw.lan_vip.span(),
                "ha.lan_vip",
                format!("{:?} is not an IP address", raw.lan_vip.get_ref()),
            );
            None
        }
    };
    if let Some(IpAddr::V4(a)) = lan_vip {
        if let Some(link) = vips.get(&a) {
            c.err(
                raw.lan_vip.span(),
                "ha.lan_vip",
                format!("{a} is link {link:?}'s public_vip too"),
            );
        }
    }
    let weight_file = file(c, raw.weight_file.as_ref(), "ha.weight_file", WEIGHT_FILE);
    let fault_file = file(c, raw.fault_file.as_ref(), "ha.fault_file", FAULT_FILE);
    if weight_file == fault_file {
        if let Some(f) = &raw.fault_file {
            c.err(f.span(), "ha.fault_file", "must differ from ha.weight_file");
        }
    }
    // keepalived's limits: VRID 1-255, priority up to 254 (255 is an address owner's) less
    // what the usable links add (render::LINKS_WEIGHT), VRRPv3 adverts in centiseconds up to
    // 40.95 s, preempt_delay up to 1000 s.
    let vrid = c.int(&raw.vrid, "ha.vrid", VRID.into(), 1..=255) as u8;
    let max_priority = 254 - crate::config::render::LINKS_WEIGHT;
    let priority = c.int(
        &raw.priority,
        "ha.priority",
        PRIORITY.into(),
        1..=max_priority,
    ) as u8;
    let advert = c.duration(&raw.advert, "ha.advert", ADVERT, |d| {
        if d.as_millis() % 10 != 0
            || d < Duration::from_millis(10)
            || d > Duration::from_millis(40_950)
        {
            Err("must be 10ms-40950ms in steps of 10ms (VRRPv3 counts centiseconds)".into())
        } else {
            Ok(())
        }
    });
    let preempt_delay = c.duration(&raw.preempt_delay, "ha.preempt_delay", PREEMPT_DELAY, |d| {
        if d <= Duration::from_secs(1000) {
            Ok(())
        } else {
            Err("must be at most 1000s".into())
        }
    });
    let handover = c.duration(&raw.handover, "ha.handover", advert * 5, |d| {
        if d <= Duration::from_secs(60) {
            Ok(())
        } else {
            Err("must be at most 60s".into())
        }
    });
    // A master that gives up before keepalived can have moved the LAN resets flows that would
    // have lived on at the peer.
    if !handover.is_zero() && handover <= advert * 3 {
        if let Some(h) = &raw.handover {
            c.err(
                h.span(),
                "ha.handover",
                format!(
                    "must be longer than keepalived's takeover time, 3 x ha.advert ({} ms), or 0s",
                    (advert * 3).as_millis()
                ),
            );
        }
    }
    let sync = match (&raw.sync_interface, &raw.sync_peer) {
        (Some(i), Some(p)) => {
            c.ifname(i, "ha.sync_interface");
            unicast_v4(c, p, "ha.sync_peer").map(|p| (i.get_ref().clone(), p))
        }
        (None, None) => None,
        (Some(i), None) => {
            c.err(
                i.span(),
                "ha.sync_interface",
                "needs ha.sync_peer (the peer's address on it)",
            );
            None
        }
        (None, Some(p)) => {
            c.err(
                p.span(),
                "ha.sync_peer",
                "needs ha.sync_interface (the link to the peer)",
            );
            None
        }
    };
    Some(Ha {
        lan_vip: lan_vip?,
        weight_file,
        fault_file,
        handover,
        vrid,
        priority,
        advert,
        preempt_delay,
        sync,
    })
}

fn file(c: &mut Checker, raw: Option<&Spanned<String>>, key: &str, default: &str) -> PathBuf {
    let Some(f) = raw else {
        return default.into();
    };
    let path = PathBuf::from(f.get_ref());
    if !path.is_absolute() || path.file_name().is_none() {
        c.err(f.span(), key, "must be an absolute path to a file");
    }
    path
}

fn unicast(a: IpAddr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_loopback() || a == Ipv4Addr::BROADCAST)
}

/// An IPv4 unicast address, or the problem reported.
pub(super) fn unicast_v4(c: &mut Checker, raw: &Spanned<String>, key: &str) -> Option<Ipv4Addr> {
    match raw.get_ref().parse::<Ipv4Addr>() {
        Ok(a) if unicast(IpAddr::V4(a)) => Some(a),
        _ => {
            c.err(
                raw.span(),
                key,
                format!("{:?} must be a unicast IPv4 address", raw.get_ref()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::{parse, Problem};

    const LINKS: &str = r#"[[link]]
name = "wan1"
interface = "wan1"
targets = ["203.0.113.10"]
public_vip = "192.0.2.6"

[[link]]
name = "wan2"
interface = "wan2"
targets = ["203.0.113.10"]

[lan]
interfaces = ["lan0"]
"#;

    fn problems(text: &str) -> Vec<(usize, String, String)> {
        let p: Vec<Problem> = parse(text).unwrap_err();
        p.into_iter().map(|p| (p.line, p.key, p.message)).collect()
    }

    #[test]
    fn a_pair_is_configured_with_its_defaults() {
        let c = parse(&format!("{LINKS}\n[ha]\nlan_vip = \"10.98.0.1\"\n")).unwrap();
        let ha = c.ha.unwrap();
        assert_eq!(ha.lan_vip.to_string(), "10.98.0.1");
        assert_eq!(ha.weight_file.to_str(), Some(super::WEIGHT_FILE));
        assert_eq!(ha.fault_file.to_str(), Some(super::FAULT_FILE));
        assert_eq!(
            c.links[0].public_vip.map(|a| a.to_string()).as_deref(),
            Some("192.0.2.6")
        );
        assert_eq!(c.links[1].public_vip, None);
    }

    #[test]
    fn keepalived_settings_default_to_fast_adverts_and_a_handover_of_five() {
        let ha = parse(&format!("{LINKS}\n[ha]\nlan_vip = \"10.98.0.1\"\n"))
            .unwrap()
            .ha
            .unwrap();
        assert_eq!(settings(&ha), (51, 200, ms(300), ms(5000), ms(1500)));
        assert_eq!(ha.sync, None);
        let ha = parse(&format!(
            "{LINKS}\n[ha]\nlan_vip = \"10.98.0.1\"\nvrid = 7\npriority = 101\nadvert = \"1s\"\n\
             preempt_delay = \"0s\"\nsync_interface = \"sync0\"\nsync_peer = \"10.98.255.2\"\n"
        ))
        .unwrap()
        .ha
        .unwrap();
        assert_eq!(settings(&ha), (7, 101, ms(1000), ms(0), ms(5000)));
        assert_eq!(
            ha.sync,
            Some(("sync0".into(), "10.98.255.2".parse().unwrap()))
        );
    }

    /// What goes into keepalived's configuration, and the handover.
    fn settings(
        ha: &crate::config::Ha,
    ) -> (u8, u8, super::Duration, super::Duration, super::Duration) {
        (
            ha.vrid,
            ha.priority,
            ha.advert,
            ha.preempt_delay,
            ha.handover,
        )
    }

    fn ms(n: u64) -> std::time::Duration {
        std::time::Duration::from_millis(n)
    }

    #[test]
    fn keepalived_settings_out_of_its_range_are_refused_at_their_line() {
        let text = format!(
            "{LINKS}\n[ha]\nlan_vip = \"10.98.0.1\"\nvrid = 0\npriority = 205\nadvert = \"15ms\"\n\
             preempt_delay = \"20m\"\nsync_interface = \"sync0\"\n"
        );
        let p = problems(&text);
        let keys: Vec<(usize, &str)> = p.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
        assert_eq!(
            keys,
            [
                (17, "ha.vrid"),
                (18, "ha.priority"),
                (19, "ha.advert"),
                (20, "ha.preempt_delay"),
                (21, "ha.sync_interface"),
            ],
            "{p:#?}"
        );
        assert!(p[4].2.contains("needs ha.sync_peer"), "{p:#?}");
        // A handover shorter than keepalived's takeover would reset flows the peer could carry.
        let p = problems(&format!(
            "{LINKS}\n[ha]\nlan_vip = \"10.98.0.1\"\nadvert = \"500ms\"\nhandover = \"1s\"\n"
        ));
        assert_eq!((p[0].0, p[0].1.as_str()), (18, "ha.handover"), "{p:#?}");
        assert!(p[0].2.contains("1500 ms"), "{p:#?}");
    }

    #[test]
    fn a_shared_address_without_a_pair_is_refused_at_its_line() {
        assert_eq!(
            problems(LINKS),
            [(
                5,
                "link[0].public_vip".into(),
                "a shared public address needs an [ha] section (two routers)".into()
            )]
        );
    }

    #[test]
    fn bad_pair_settings_are_each_reported_at_their_line() {
        let text = format!(
            "{}\n[ha]\nlan_vip = \"192.0.2.6\"\nweight_file = \"vrrp\"\nfault_file = \"vrrp\"\n",
            LINKS.replace(
                "targets = [\"203.0.113.10\"]\n\n[lan]",
                "targets = [\"203.0.113.10\"]\npublic_vip = \"192.0.2.6\"\n\n[lan]"
            )
        );
        let p = problems(&text);
        let keys: Vec<(usize, &str)> = p.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
        assert_eq!(
            keys,
            [
                (11, "link[1].public_vip"),
                (17, "ha.lan_vip"),
                (18, "ha.weight_file"),
                (19, "ha.fault_file"),
                (19, "ha.fault_file"),
            ],
            "{p:#?}"
        );
        assert!(p[0].2.contains("link \"wan1\"'s public_vip too"), "{p:#?}");
        assert!(
            problems(&format!("{LINKS}\n[ha]\nlan_vip = \"224.0.0.18\"\n"))[0]
                .2
                .contains("unicast")
        );
        assert!(problems(&format!("{LINKS}\n[ha]\nlan_vip = \"gw\"\n"))[0]
            .2
            .contains("not an IP address"));
        assert!(problems(&format!("{LINKS}\n[ha]\n"))[0]
            .2
            .contains("lan_vip"));
    }
}
