//! `[[link]]` and `[lan]`: the WAN links and the LAN interfaces.

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use toml::Spanned;
use uplinkd_probes::Target;

use super::super::fence::{mark_capacity, MAX_LINKS};
use super::super::raw::{RawDataplane, RawLan, RawLink};
use super::super::{DataplaneOptions, Link, Prefix};
use super::Checker;

/// There is at least one link, and no more than the mark mask and `MAX_LINKS` leave room for.
/// A problem is reported at the mask if it is written, else at the first link too many.
pub(super) fn count(
    c: &mut Checker,
    raw: &[Spanned<RawLink>],
    raw_dp: &RawDataplane,
    dp: &DataplaneOptions,
) {
    if raw.is_empty() {
        c.err(0..0, "link", "at least one [[link]] is required");
    }
    let first_beyond = |max: u32| raw.get(max as usize).map_or(0..0, |l| l.span());
    let max_links = mark_capacity(dp.mark_mask);
    if raw.len() as u64 > u64::from(max_links) {
        let span = raw_dp
            .mark_mask
            .as_ref()
            .map_or_else(|| first_beyond(max_links), |m| m.span());
        c.err(
            span,
            "dataplane.mark_mask",
            format!(
                "{:#x} leaves room for {max_links} links, {} configured",
                dp.mark_mask,
                raw.len()
            ),
        );
    }
    if raw.len() > MAX_LINKS as usize {
        let span = first_beyond(MAX_LINKS);
        c.err(
            span,
            "link",
            format!(
                "at most {MAX_LINKS} links are supported, {} configured",
                raw.len()
            ),
        );
    }
}

/// The links in configuration order, their marks and tables not yet allocated (0).
/// `detection_quorum` is the default of each link's quorum.
pub(super) fn links(
    c: &mut Checker,
    raw: &[Spanned<RawLink>],
    detection_quorum: Option<&Spanned<u32>>,
) -> Vec<Link> {
    let mut names = BTreeSet::new();
    let mut ifaces = BTreeSet::new();
    let mut out = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let l = l.get_ref();
        let key = |field: &str| format!("link[{i}].{field}");
        let name = l.name.get_ref();
        if c.name(l.name.span(), &key("name"), name) && !names.insert(name.clone()) {
            c.err(
                l.name.span(),
                key("name"),
                format!("{name:?} is used by another link"),
            );
        }
        c.ifname(&l.interface, &key("interface"));
        if !ifaces.insert(l.interface.get_ref().clone()) {
            c.err(
                l.interface.span(),
                key("interface"),
                format!("{:?} is used by another link", l.interface.get_ref()),
            );
        }
        let gateway = gateway(c, l.gateway.as_ref(), &key("gateway"));
        let gateway6 = gateway6(c, l.gateway6.as_ref(), &key("gateway6"));
        let targets = targets(c, &l.targets, &key("targets"));
        let quorum = quorum(c, l, targets.len() as u32, detection_quorum, &key("quorum"));
        let nptv6 = nptv6(c, l.nptv6.as_ref(), &key("nptv6"));
        let public_vip = l
            .public_vip
            .as_ref()
            .and_then(|v| super::ha::unicast_v4(c, v, &key("public_vip")));
        out.push(Link {
            nptv6,
            public_vip,
            name: name.clone(),
            quorum,
            failback: l.failback,
            interface: l.interface.get_ref().clone(),
            gateway,
            gateway6,
            priority: l.priority,
            weight: c.int(&l.weight, &key("weight"), 1, 1..=1000),
            targets,
            // Allocated by `fence::allocate` once the whole configuration is valid.
            mark: 0,
            table: 0,
        });
    }
    out
}

/// An IPv6 next hop: unicast, not loopback or unspecified. A link-local one (what router
/// advertisements announce) is fine: the route names its interface.
fn gateway6(c: &mut Checker, raw: Option<&Spanned<String>>, key: &str) -> Option<Ipv6Addr> {
    raw.and_then(|g| match g.get_ref().parse::<Ipv6Addr>() {
        Ok(a) if !a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && a.to_ipv4_mapped().is_none() => Some(a),
        _ => {
            c.err(
                g.span(),
                key,
                format!("{:?} is not a usable IPv6 unicast address (link-local like \"fe80::1\" or global)", g.get_ref()),
            );
            None
        }
    })
}

/// A next hop the kernel could take: not 0.0.0.0/8 or 255.255.255.255 (the kernel's
/// `inet_addr_type()` calls them broadcast), multicast or loopback (local). Whether it is on the
/// link's subnet is known only at run time. A link-local (169.254/16) next hop is on-link by
/// definition and some providers use one.
fn gateway(c: &mut Checker, raw: Option<&Spanned<String>>, key: &str) -> Option<Ipv4Addr> {
    raw.and_then(|g| match g.get_ref().parse::<Ipv4Addr>() {
        Ok(a) if a.is_loopback() => {
            c.err(
                g.span(),
                key,
                format!("{a} is a loopback address: the gateway must be a router on the link"),
            );
            None
        }
        Ok(a) if a.octets()[0] != 0 && !a.is_multicast() && !a.is_broadcast() => Some(a),
        _ => {
            c.err(
                g.span(),
                key,
                format!("{:?} is not a usable IPv4 unicast address", g.get_ref()),
            );
            None
        }
    })
}

fn targets(c: &mut Checker, raw: &Spanned<Vec<Spanned<toml::Value>>>, key: &str) -> Vec<Target> {
    if raw.get_ref().is_empty() {
        c.err(raw.span(), key, "must list at least one address to probe");
    }
    let mut targets: Vec<Target> = Vec::new();
    let mut seen = HashSet::new();
    for t in raw.get_ref() {
        match target(t.get_ref()) {
            Ok(target) if !seen.insert(target.clone()) => {
                c.err(t.span(), key, format!("{target} is listed twice"));
            }
            Ok(target) => targets.push(target),
            Err(e) => c.err(t.span(), key, e),
        }
    }
    targets
}

/// A target: its URL, or a table with the URL of an HTTPS target and how to verify it.
fn target(v: &toml::Value) -> Result<Target, String> {
    let table = match v {
        toml::Value::String(s) => return s.parse(),
        toml::Value::Table(t) => t,
        other => {
            return Err(format!(
                "a target is a string, or a table with url, server_name and ca_file; not a {}",
                other.type_str()
            ))
        }
    };
    if let Some(k) = table
        .keys()
        .find(|k| !["url", "server_name", "ca_file"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key {k:?} in a target (url, server_name, ca_file)"
        ));
    }
    let text = |k: &str| match table.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{k} must be a string")),
    };
    let url = text("url")?.ok_or("a target table needs a url")?;
    let Target::Https {
        addr, host, path, ..
    } = url.parse()?
    else {
        return Err(format!(
            "{url}: server_name and ca_file are for https:// targets"
        ));
    };
    let server_name = text("server_name")?;
    if let Some(n) = &server_name {
        dns_name(n)?;
    }
    let ca_file = text("ca_file")?.map(std::path::PathBuf::from);
    if let Some(f) = &ca_file {
        if !f.is_absolute() {
            return Err(format!("ca_file {f:?} must be an absolute path"));
        }
        // Read now: a file that cannot be used is an error of this line, not of every probe.
        uplinkd_probes::tls::client_config(Some(f))?;
    }
    Ok(Target::Https {
        addr,
        host,
        path,
        server_name,
        ca_file,
    })
}

/// A server name a certificate can be checked against: a DNS name (an address goes in the
/// url).
fn dns_name(n: &str) -> Result<(), String> {
    if n.parse::<std::net::IpAddr>().is_err() && uplinkd_probes::dns_name(n) {
        Ok(())
    } else {
        Err(format!("server_name {n:?} is not a DNS name"))
    }
}

/// The link's own quorum, or else `detection.quorum`, or else all of its `n` targets.
fn quorum(
    c: &mut Checker,
    l: &RawLink,
    n: u32,
    detection_quorum: Option<&Spanned<u32>>,
    key: &str,
) -> u32 {
    match (&l.quorum, detection_quorum) {
        (Some(q), _) | (None, Some(q)) => {
            let v = *q.get_ref();
            if n > 0 && !(1..=n).contains(&v) {
                let k = if l.quorum.is_some() {
                    key
                } else {
                    "detection.quorum"
                };
                c.err(
                    q.span(),
                    k,
                    format!("must be between 1 and the link's {n} targets, got {v}"),
                );
            }
            v.clamp(1, n.max(1))
        }
        (None, None) => n.max(1),
    }
}

fn nptv6(c: &mut Checker, raw: Option<&Spanned<String>>, key: &str) -> Option<Prefix> {
    raw.and_then(|p| match p.get_ref().parse::<Prefix>() {
        Ok(n) if n.is_ipv6() && (1..=64).contains(&n.len) => Some(n),
        Ok(_) => {
            c.err(
                p.span(),
                key,
                "must be an IPv6 prefix of length 1-64, like \"2001:db8:1::/48\"",
            );
            None
        }
        Err(e) => {
            c.err(p.span(), key, e);
            None
        }
    })
}

/// The LAN interfaces: at least one, none of them a link's.
pub(super) fn lan(c: &mut Checker, raw: Option<&Spanned<RawLan>>, links: &[Link]) -> Vec<String> {
    let Some(lan) = raw else {
        c.err(
            0..0,
            "lan",
            "missing section [lan] with `interfaces = [...]`",
        );
        return Vec::new();
    };
    let ifs = &lan.get_ref().interfaces;
    if ifs.get_ref().is_empty() {
        c.err(
            ifs.span(),
            "lan.interfaces",
            "must name at least one interface",
        );
    }
    let wan: BTreeSet<&str> = links.iter().map(|l| l.interface.as_str()).collect();
    let mut seen = BTreeSet::new();
    for i in ifs.get_ref() {
        c.ifname(i, "lan.interfaces");
        if wan.contains(i.get_ref().as_str()) {
            c.err(
                i.span(),
                "lan.interfaces",
                format!("{:?} is also a link's interface", i.get_ref()),
            );
        }
        if !seen.insert(i.get_ref().clone()) {
            c.err(
                i.span(),
                "lan.interfaces",
                format!("{:?} is listed twice", i.get_ref()),
            );
        }
    }
    ifs.get_ref().iter().map(|i| i.get_ref().clone()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::parse;

    /// The problems of a file with one link, as (line, key, message).
    fn problems(link: &str, lan: &str) -> Vec<(usize, String, String)> {
        let lan = quoted(lan);
        let text = format!("[[link]]\nname = \"l\"\n{link}\n\n[lan]\ninterfaces = [{lan}]\n");
        match parse(&text) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|p| (p.line, p.key, p.message)).collect(),
        }
    }

    /// The one problem of a file with one link, `link`, which must be at `line` under `key`:
    /// its message.
    fn refused(link: &str, line: usize, key: &str) -> String {
        let p = problems(link, "lan0");
        assert_eq!(p.len(), 1, "{link}: {p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (line, key), "{link}");
        p[0].2.clone()
    }

    /// `s` as a TOML string.
    fn quoted(s: &str) -> String {
        toml::Value::String(s.into()).to_string()
    }

    #[test]
    fn interface_names_follow_the_kernel() {
        let link =
            |ifname: &str| format!("interface = {}\ntargets = [\"192.0.2.1\"]", quoted(ifname));
        // (15 bytes; 'é' is not whitespace to the kernel.)
        for ok in ["wan0", "wan0.100", "br-lan", "very-long-ifnam", "wan-é"] {
            assert_eq!(problems(&link(ok), "lan0"), [], "{ok:?}");
        }
        // dev_valid_name() in net/core/dev.c: not empty, shorter than IFNAMSIZ (16), not "." or
        // "..", no '/', ':' or isspace() byte; a NUL would cut the name short. The kernel's
        // isspace() also takes 0xa0, which is inside 'à' (c3 a0).
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{b}b",
            "wan\0x",
            "sixteen-bytes-xx",
            "wanà",
        ] {
            let why = refused(&link(bad), 3, "link[0].interface");
            assert!(why.contains("is not a valid interface name"), "{why}");
            let p = problems(&link("wan0"), bad);
            assert_eq!(
                (p.len(), p[0].0, p[0].1.as_str()),
                (1, 7, "lan.interfaces"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gateways_that_cannot_be_next_hops_are_refused() {
        let link =
            |gw: &str| format!("interface = \"wan0\"\ntargets = [\"192.0.2.1\"]\ngateway = {gw:?}");
        // A link-local next hop is on-link by definition (some providers use 169.254.1.1).
        for ok in ["100.64.1.1", "192.168.1.1", "169.254.1.1"] {
            assert_eq!(problems(&link(ok), "lan0"), [], "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            refused(&link(bad), 5, "link[0].gateway");
        }
    }

    /// A CA certificate (EC P-256, self-signed, valid until 2126) for the HTTPS target tests.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBizCCATGgAwIBAgIUL9QFnwDWOZDa97jwF8FJr2Tlft8wCgYIKoZIzj0EAwIw\nGjEYMBYGA1UEAwwPdXBsaW5rZCB0ZXN0IENBMCAXDTI2MTIwMjIwMTQxOVoYDzIx\nMjYxMTA4MjAxNDE5WjAaMRgwFgYDVQQDDA91cGxpbmtkIHRlc3QgQ0EwWTATBgcq\nhkjOPQIBBggqhkjOPQMBBwNCAAST1zjRLvc9aH2sF7Bbb6yeCMKFzyFfUYPr5xd3\nefatlIdfmmT2etMPI4iYfi7Au6F5cuWAl2EWViTEFY2R2p1Fo1MwUTAdBgNVHQ4E\nFgQUQjg180GYgQDtA10MvQ1k5wccYuUwHwYDVR0jBBgwFoAUQjg180GYgQDtA10M\nvQ1k5wccYuUwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA7f3L\nEQET6igMvgNs83rTE1kjHpDdLfiS5MqiFtBrwx4CIBLLWjkpeP30ks3ogVvV13p9\nzC2/PH9huFNr7shr6mH9\n-----END CERTIFICATE-----\n";

    #[test]
    fn https_targets_take_a_server_name_and_a_ca_file_of_their_own() {
        let ca = std::env::temp_dir().join(format!("uplinkd-test-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, TEST_CA).unwrap();
        let link = |t: &str| format!("interface = \"wan0\"\ntargets = [\"192.0.2.1\",\n  {t}]");
        let ok = format!(
            "{{ url = \"https://203.0.113.10:8443/health\", server_name = \"health.example\", ca_file = {:?} }}",
            ca.display().to_string()
        );
        let c = crate::config::parse(&format!(
            "[[link]]\nname = \"l\"\n{}\n[lan]\ninterfaces = [\"lan0\"]\n",
            link(&ok)
        ))
        .unwrap();
        assert_eq!(
            c.links[0].targets[1],
            uplinkd_probes::Target::Https {
                addr: "203.0.113.10:8443".parse().unwrap(),
                host: "203.0.113.10:8443".into(),
                path: "/health".into(),
                server_name: Some("health.example".into()),
                ca_file: Some(ca.clone()),
            }
        );
        assert_eq!(problems(&link("\"https://203.0.113.10/\""), "lan0"), []);
        let missing = ca.with_extension("missing");
        for (bad, why) in [
            (
                "{ url = \"https://203.0.113.10/\", ca = \"/x\" }".to_string(),
                "unknown key \"ca\"",
            ),
            (
                "{ url = \"http://203.0.113.10/\", server_name = \"a.example\" }".into(),
                "are for https:// targets",
            ),
            ("{ server_name = \"a.example\" }".into(), "needs a url"),
            (
                "{ url = \"https://203.0.113.10/\", server_name = \"203.0.113.10\" }".into(),
                "is not a DNS name",
            ),
            (
                "{ url = \"https://203.0.113.10/\", ca_file = \"ca.pem\" }".into(),
                "must be an absolute path",
            ),
            (
                format!(
                    "{{ url = \"https://203.0.113.10/\", ca_file = {:?} }}",
                    missing.display().to_string()
                ),
                "CA file",
            ),
            (
                "{ url = \"https://203.0.113.10/\", server_name = 7 }".into(),
                "server_name must be a string",
            ),
            ("42".into(), "not a integer"),
        ] {
            let message = refused(&link(&bad), 5, "link[0].targets");
            assert!(message.contains(why), "{bad}: {message}");
        }
        std::fs::remove_file(&ca).unwrap();
    }

    #[test]
    fn ipv6_gateways_are_link_local_or_global_unicast() {
        let link = |gw: &str| {
            format!("interface = \"wan0\"\ntargets = [\"192.0.2.1\"]\ngateway6 = {gw:?}")
        };
        for ok in ["fe80::1", "2001:db8:1::1", "fd00::1"] {
            assert_eq!(problems(&link(ok), "lan0"), [], "{ok}");
        }
        for bad in [
            "::1",
            "::",
            "ff02::2",
            "::ffff:192.0.2.1",
            "192.0.2.1",
            "fe80::1%wan0",
        ] {
            let why = refused(&link(bad), 5, "link[0].gateway6");
            assert!(why.contains("not a usable IPv6 unicast address"), "{why}");
        }
    }

    #[test]
    fn targets_that_cannot_answer_are_refused_with_their_line() {
        for bad in [
            "127.0.0.1",
            "::1",
            "icmp://127.0.0.53",
            "::",
            "ff02::1",
            "tcp://203.0.113.10:0",
            "http://203.0.113.10/a b",
        ] {
            let link = format!("interface = \"wan0\"\ntargets = [\"192.0.2.1\",\n  {bad:?}]");
            refused(&link, 5, "link[0].targets");
        }
    }

    #[test]
    fn missing_sections_are_reported() {
        let p = parse("").unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["link", "lan"]);
    }
}
