//! Rendering snapshots (the spec of the table's text) and the encoding's own tests.

#![allow(clippy::unwrap_used)]

use super::plan::{intervals, MatchKind, Op};
use super::text;
use super::*;
use crate::engine::{DesiredState, Engine, Steer};

use crate::config::TEST_LINKS as LINKS;

/// The desired state of a configuration (links as `LINKS`, then `extra`), with the
/// default policy's share set to `share`.
fn state(lan: &str, extra: &str, share: &[(usize, u32)]) -> DesiredState {
    let text = format!("{LINKS}\n[lan]\ninterfaces = [{lan}]\n{extra}");
    let config = crate::config::parse(&text).unwrap();
    let mut d = Engine::new(config, std::time::Instant::now()).desired();
    d.policies[0].steer = Steer::Share(share.to_vec());
    d.router_link = share.first().map(|&(l, _)| l);
    for l in &mut d.links {
        l.usable = true;
    }
    d
}

fn chain(r: &Ruleset, name: &str) -> Vec<String> {
    let c = r.chains.iter().find(|c| c.name == name).unwrap();
    c.rules
        .iter()
        .map(|ops| ops.iter().map(Op::to_string).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn renders_restore_steer_resets_and_masquerade() {
    let addrs = [
        vec!["100.64.1.2".parse().unwrap()],
        vec!["100.64.2.2".parse().unwrap()],
    ];
    let text = render(&state(r#""lan0", "lan1""#, "", &[(1, 1)]), &addrs).to_string();
    let want = r#"table inet uplinkd {
  set stale4 { type ipv4_addr . ipv4_addr . inet_service . inet_service; size 4194304; flags dynamic,timeout; timeout 1200s; }
  set stale6 { type ipv6_addr . ipv6_addr . inet_service . inet_service; size 4194304; flags dynamic,timeout; timeout 1200s; }
  set foreign_nat_1 { type ipv4_addr; flags dynamic,timeout; }
  set foreign_nat_2 { type ipv4_addr; flags dynamic,timeout; }
  map link_marks { type mark : verdict; elements = { 0xf00 : jump restore_l1, 0x3c00 : jump restore_l2 }; }
  chain prerouting { type filter hook prerouting priority -150; policy accept;
    ct mark & 0xff00 vmap @link_marks
    ct state new jump prerouting_new
  }
  chain forward { type filter hook forward priority 0; policy accept;
    iifname "lan0" meta nfproto ipv4 meta l4proto tcp tcp flags & syn != 0 ip saddr . ip daddr . tcp sport . tcp dport @stale4 delete @stale4 { ip saddr . ip daddr . tcp sport . tcp dport }
    iifname "lan0" meta nfproto ipv4 meta l4proto tcp tcp flags & syn == 0 ip saddr . ip daddr . tcp sport . tcp dport @stale4 reject with tcp reset
    iifname "lan0" meta nfproto ipv6 meta l4proto tcp tcp flags & syn != 0 ip6 saddr . ip6 daddr . tcp sport . tcp dport @stale6 delete @stale6 { ip6 saddr . ip6 daddr . tcp sport . tcp dport }
    iifname "lan0" meta nfproto ipv6 meta l4proto tcp tcp flags & syn == 0 ip6 saddr . ip6 daddr . tcp sport . tcp dport @stale6 reject with tcp reset
    iifname "lan1" meta nfproto ipv4 meta l4proto tcp tcp flags & syn != 0 ip saddr . ip daddr . tcp sport . tcp dport @stale4 delete @stale4 { ip saddr . ip daddr . tcp sport . tcp dport }
    iifname "lan1" meta nfproto ipv4 meta l4proto tcp tcp flags & syn == 0 ip saddr . ip daddr . tcp sport . tcp dport @stale4 reject with tcp reset
    iifname "lan1" meta nfproto ipv6 meta l4proto tcp tcp flags & syn != 0 ip6 saddr . ip6 daddr . tcp sport . tcp dport @stale6 delete @stale6 { ip6 saddr . ip6 daddr . tcp sport . tcp dport }
    iifname "lan1" meta nfproto ipv6 meta l4proto tcp tcp flags & syn == 0 ip6 saddr . ip6 daddr . tcp sport . tcp dport @stale6 reject with tcp reset
    iifname "lan0" ct state invalid drop
    iifname "lan1" ct state invalid drop
  }
  chain output { type filter hook output priority -300; policy accept;
    meta mark & 0xff00 == 0xff00 notrack
  }
  chain output_route { type route hook output priority -150; policy accept;
    ct mark & 0xff00 vmap @link_marks
    ct state new meta mark & 0xff00 == 0x0 jump output_route_new
  }
  chain record_link { type filter hook postrouting priority -150; policy accept;
    ct state new jump record_link_new
  }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    oifname "wan1" meta nfproto ipv4 snat ip to 100.64.1.2
    oifname "wan1" masquerade
    oifname "wan2" meta nfproto ipv4 snat ip to 100.64.2.2
    oifname "wan2" masquerade
  }
  chain check_nat { type filter hook postrouting priority 300; policy accept;
    ct state new meta nfproto ipv4 jump check_nat_new
  }
  chain prerouting_new {
    iifname "wan1" ct mark set ct mark & 0xffff00ff | 0xf00
    iifname "wan2" ct mark set ct mark & 0xffff00ff | 0x3c00
    iifname "lan0" meta mark & 0xff00 == 0x0 jump steer
    iifname "lan1" meta mark & 0xff00 == 0x0 jump steer
  }
  chain output_route_new {
    ip saddr 100.64.1.2/32 meta mark set meta mark & 0xffff00ff | 0xf00
    jump steer
  }
  chain record_link_new {
    oifname "wan1" ct mark set ct mark & 0xffff00ff | 0xf00
    oifname "wan2" ct mark set ct mark & 0xffff00ff | 0x3c00
  }
  chain check_nat_new {
    oifname "wan1" ct reply ip daddr != 100.64.1.2 add @foreign_nat_1 { ct reply ip daddr timeout 600s }
    oifname "wan2" ct reply ip daddr != 100.64.2.2 add @foreign_nat_2 { ct reply ip daddr timeout 600s }
  }
  chain restore_l1 {
    meta mark set meta mark & 0xffff00ff | 0xf00
  }
  chain restore_l2 {
    meta mark set meta mark & 0xffff00ff | 0x3c00
  }
  chain steer {
    meta mark & 0xff00 == 0x0 jump policy_default
  }
  chain policy_default {
    meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x3c00
  }
}"#;
    assert_eq!(text, want);
}

#[test]
fn links_of_a_tier_share_new_flows_by_weight() {
    let d = state(r#""lan0""#, "", &[(0, 3), (1, 1)]);
    assert_eq!(
        chain(&render(&d, &[]), "policy_default"),
        vec![
            "meta mark & 0xff00 == 0x0 numgen random mod 4 < 3 meta mark set meta mark & 0xffff00ff | 0xf00",
            "meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x3c00",
        ]
    );
}

#[test]
fn rules_match_each_list_through_one_interval_set_lookup_per_family() {
    let extra = r#"
[sets]
phones = ["192.168.1.20", "192.168.1.21"]

[[policy]]
name = "lte-first"
links = ["l2", "l1"]

[[rule]]
src = ["192.168.1.50/32"]
policy = "lte-first"

[[rule]]
iif = ["lan1"]
src = ["@phones", "fd00::/64"]
proto = "udp"
dport = [5060, "10000-20000"]
policy = "lte-first"
"#;
    let mut d = state(r#""lan0", "lan1""#, extra, &[(0, 1)]);
    d.policies[1].steer = Steer::Share(vec![(1, 1)]);
    let r = render(&d, &[]);
    assert_eq!(
        chain(&r, "steer"),
        vec![
            "meta mark & 0xff00 == 0x0 ip saddr @rule0_src4 jump policy_lte-first",
            "meta mark & 0xff00 == 0x0 iifname \"lan1\" meta l4proto udp ip saddr @rule1_src4 th dport @rule1_dport jump policy_lte-first",
            "meta mark & 0xff00 == 0x0 iifname \"lan1\" meta l4proto udp ip6 saddr @rule1_src6 th dport @rule1_dport jump policy_lte-first",
            "meta mark & 0xff00 == 0x0 jump policy_default",
        ]
    );
    let text = r.to_string();
    for set in [
        "set rule0_src4 { type ipv4_addr; flags interval; elements = { 192.168.1.50 }; }",
        // Adjacent addresses merge into one interval.
        "set rule1_src4 { type ipv4_addr; flags interval; elements = { 192.168.1.20-192.168.1.21 }; }",
        "set rule1_src6 { type ipv6_addr; flags interval; elements = { fd00::-fd00::ffff:ffff:ffff:ffff }; }",
        "set rule1_dport { type inet_service; flags interval; elements = { 5060, 10000-20000 }; }",
    ] {
        assert!(text.contains(set), "{set} not in {text}");
    }
    assert_eq!(r.match_sets.len(), 4);
    assert_eq!(
        chain(&r, "policy_lte-first"),
        vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x3c00"]
    );
}

#[test]
fn list_intervals_are_sorted_merged_and_open_at_the_top() {
    let v4 = |a: [u8; 4]| u128::from(u32::from_be_bytes(a));
    // Overlapping, adjacent and contained ranges merge; the highest key has no end.
    assert_eq!(
        intervals(
            MatchKind::V4,
            vec![
                (v4([10, 0, 0, 0]), v4([10, 255, 255, 255])),
                (v4([10, 1, 0, 0]), v4([10, 1, 0, 255])),
                (v4([11, 0, 0, 0]), v4([11, 0, 0, 0])),
                (v4([255, 255, 255, 0]), v4([255, 255, 255, 255])),
                (v4([1, 2, 3, 4]), v4([1, 2, 3, 4])),
            ]
        ),
        vec![
            (v4([1, 2, 3, 4]), Some(v4([1, 2, 3, 5]))),
            (v4([10, 0, 0, 0]), Some(v4([11, 0, 0, 1]))),
            (v4([255, 255, 255, 0]), None),
        ]
    );
    assert_eq!(
        intervals(
            MatchKind::Port,
            vec![(443, 443), (0, 80), (81, 81), (65535, 65535)]
        ),
        vec![(0, Some(82)), (443, Some(444)), (65535, None)]
    );
    assert_eq!(MatchKind::V6.max(), u128::MAX);
}

#[test]
fn a_policy_without_usable_links_falls_back_or_refuses() {
    let extra = r#"
[[policy]]
name = "fallback"
links = ["l2"]

[[policy]]
name = "strict"
links = ["l2"]
last_resort = "unreachable"
"#;
    let mut d = state(r#""lan0""#, extra, &[(0, 1)]);
    d.policies[1].steer = Steer::Fallback;
    d.policies[2].steer = Steer::Refuse;
    let r = render(&d, &[]);
    assert_eq!(chain(&r, "policy_fallback"), vec!["goto policy_default"]);
    assert_eq!(
        chain(&r, "policy_strict"),
        vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0xfe00"]
    );
    // The default policy itself refuses when it has nothing (last_resort = "unreachable").
    d.policies[0].steer = Steer::Refuse;
    assert_eq!(
        chain(&render(&d, &[]), "policy_default"),
        vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0xfe00"]
    );
}

#[test]
fn sticky_policies_remember_sources_per_link() {
    let extra = r#"
[[policy]]
name = "default"
links = [{ link = "l1", priority = 1 }, { link = "l2", priority = 1 }]
sticky = "10m"
"#;
    let d = state(r#""lan0""#, extra, &[(0, 1), (1, 1)]);
    let r = render(&d, &[]);
    let names: Vec<&str> = r.addr_sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "sticky_default_1_4",
            "sticky_default_1_6",
            "sticky_default_2_4",
            "sticky_default_2_6"
        ]
    );
    let rules = chain(&r, "policy_default");
    assert_eq!(rules.len(), 8, "{rules:#?}");
    assert_eq!(rules[0], "meta mark & 0xff00 == 0x0 ip saddr @sticky_default_1_4 meta mark set meta mark & 0xffff00ff | 0xf00 update @sticky_default_1_4 { ip saddr timeout 600s }");
    assert_eq!(rules[3], "meta mark & 0xff00 == 0x0 ip6 saddr @sticky_default_2_6 meta mark set meta mark & 0xffff00ff | 0x3c00 update @sticky_default_2_6 { ip6 saddr timeout 600s }");
    assert_eq!(rules[4], "meta mark & 0xff00 == 0x0 meta nfproto ipv4 numgen random mod 2 < 1 meta mark set meta mark & 0xffff00ff | 0xf00 add @sticky_default_1_4 { ip saddr timeout 600s } delete @sticky_default_2_4 { ip saddr }");
    assert_eq!(rules[7], "meta mark & 0xff00 == 0x0 meta nfproto ipv6 meta mark set meta mark & 0xffff00ff | 0x3c00 add @sticky_default_2_6 { ip6 saddr timeout 600s } delete @sticky_default_1_6 { ip6 saddr }");
    // With no usable link the sets stay (hosts are remembered through the outage), and
    // nobody is re-placed.
    let mut down = d.clone();
    down.links.iter_mut().for_each(|l| l.usable = false);
    let r = render(&down, &[]);
    assert_eq!(r.addr_sets.len(), 4);
    assert!(chain(&r, "policy_default").iter().all(|r| !r.contains('@')));
}

#[test]
fn nptv6_links_translate_the_prefix_and_masquerade_ipv4() {
    let text = format!("{LINKS}\n[lan]\ninterfaces = [\"lan0\"]\n").replacen(
        "interface = \"wan1\"",
        "interface = \"wan1\"\nnptv6 = \"2001:db8:1::/48\"",
        1,
    );
    let config = crate::config::parse(&text).unwrap();
    let d = Engine::new(config, std::time::Instant::now()).desired();
    assert_eq!(
        chain(&render(&d, &[]), "postrouting"),
        vec![
            "oifname \"wan1\" meta nfproto ipv6 snat ip6 prefix to 2001:db8:1::/48",
            "oifname \"wan1\" masquerade",
            "oifname \"wan2\" masquerade",
        ]
    );
}

/// A rule's text is its ops' texts joined: no phrase spans two ops.
#[test]
fn rule_text_is_its_ops_text() {
    let extra = r#"
[sets]
phones = ["192.168.1.20", "fd00::20"]

[[policy]]
name = "default"
links = [{ link = "l1", priority = 1 }, { link = "l2", priority = 1 }]
sticky = "10m"

[[rule]]
src = ["@phones"]
dst = ["2001:db8::/32"]
proto = "udp"
sport = [5060]
policy = "default"
"#;
    let d = state(r#""lan0", "lan1""#, extra, &[(0, 3), (1, 1)]);
    let addrs = [vec![
        "100.64.1.2".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    ]];
    let r = render(&d, &addrs);
    for c in &r.chains {
        for ops in &c.rules {
            let each: Vec<String> = ops.iter().map(Op::to_string).collect();
            assert_eq!(text::rule(ops), each.join(" "));
            assert!(!text::rule(ops).contains('['), "{}", text::rule(ops));
        }
    }
}

/// How many netlink messages a batch holds.
fn messages(b: &nftnl::FinalizedBatch) -> usize {
    b.sequence_numbers().count()
}

#[test]
fn an_update_writes_only_the_chains_and_intervals_that_changed() {
    let nets: Vec<String> = (0..3000)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 128, i % 128 * 2))
        .collect();
    let extra = format!(
        "[[policy]]\nname = \"lte-first\"\nlinks = [\"l2\", \"l1\"]\n\n[[rule]]\ndst = [{}]\npolicy = \"lte-first\"\n",
        nets.join(", ")
    );
    let d = state(r#""lan0""#, &extra, &[(0, 1)]);
    let r1 = render(&d, &[]);
    let fresh = messages(&batch::build(&r1, None).unwrap());
    // Nothing changed: the table, its sets and chains are declared again, no rule or element.
    let same = messages(&batch::build(&r1, Some((&r1, false))).unwrap());
    // Batch begin and end, the table, the two stale sets, the link marks' map, the list's set,
    // the chains.
    let declarations = 2 + 1 + 2 + 1 + 1 + r1.chains.len();
    assert_eq!(same, declarations);
    assert!(fresh > same + 3000 / 1000, "{fresh} vs {same}");
    // A failover: the default policy's chain is flushed and refilled, nothing else.
    let mut failover = d.clone();
    failover.policies[0].steer = Steer::Share(vec![(1, 1)]);
    let r2 = render(&failover, &[]);
    let changed = r2.chains.iter().filter(|c| !r1.chains.contains(c)).count();
    assert_eq!(changed, 1);
    let rules = chain(&r2, "policy_default").len();
    assert_eq!(
        messages(&batch::build(&r2, Some((&r1, false))).unwrap()),
        declarations + 1 + rules
    );
    // One prefix of the rule's list changed: one interval out, one in, two messages.
    let mut edited = d.clone();
    let mut rules = (*edited.rules).clone();
    rules[0].dst[7] = "192.0.2.0/24".parse().unwrap();
    edited.rules = rules.into();
    let r3 = render(&edited, &[]);
    assert_eq!(
        messages(&batch::build(&r3, Some((&r1, false))).unwrap()),
        declarations + 2
    );
    // A repair rewrites everything but keeps the dynamic sets: a flush of the list's set, of
    // the link marks' map and of every chain, then all of it again.
    let repair = messages(&batch::build(&r1, Some((&r1, true))).unwrap());
    assert_eq!(repair, fresh - 2 + 2 + r1.chains.len());
}

#[test]
fn a_pair_steers_only_unicast_guards_its_wans_and_translates_to_the_shared_address() {
    let addrs = [
        vec!["100.64.1.2".parse().unwrap()],
        vec!["100.64.2.2".parse().unwrap()],
    ];
    let mut d = state(r#""lan0""#, "[ha]\nlan_vip = \"10.99.0.254\"\n", &[(0, 1)]);
    d.links[0].public_vip = Some("192.0.2.6".parse().unwrap());
    let r = render(&d, &addrs);
    assert!(
        chain(&r, "prerouting_new").contains(
            &r#"iifname "lan0" meta pkttype host meta mark & 0xff00 == 0x0 jump steer"#.into()
        ),
        "{:#?}",
        chain(&r, "prerouting_new")
    );
    let guard: Vec<String> = ["wan1", "wan2"]
        .iter()
        .flat_map(|w| {
            [
                format!(r#"iifname "{w}" ct state invalid drop"#),
                format!(r#"iifname "{w}" meta l4proto tcp tcp flags & syn == 0 ct state new drop"#),
            ]
        })
        .collect();
    assert_eq!(chain(&r, "wan_guard"), guard);
    // Entered only by invalid and new packets, from input and at the end of forward.
    let enter = [
        "ct state invalid jump wan_guard",
        "ct state new jump wan_guard",
    ];
    assert_eq!(chain(&r, "input"), enter);
    assert!(
        chain(&r, "forward").ends_with(&enter.map(String::from)),
        "{:#?}",
        chain(&r, "forward")
    );
    // LAN flows take the shared address; the router's own (its probes) keep its address.
    let post = chain(&r, "postrouting");
    assert_eq!(
        post[..3],
        [
            r#"iifname "lan0" oifname "wan1" meta nfproto ipv4 snat ip to 192.0.2.6"#,
            r#"oifname "wan1" meta nfproto ipv4 snat ip to 100.64.1.2"#,
            r#"oifname "wan1" masquerade"#,
        ]
    );
    assert_eq!(
        post[3],
        r#"oifname "wan2" meta nfproto ipv4 snat ip to 100.64.2.2"#
    );
    // Neither is another table's NAT.
    assert!(chain(&r, "check_nat_new")[0].contains(
        "ct reply ip daddr != 100.64.1.2 ct reply ip daddr != 192.0.2.6 add @foreign_nat_1"
    ));
    // The text reads back as written (what `nft list` shows is what was meant).
    let text = r.to_string();
    assert!(
        text.contains("chain input { type filter hook input priority 0; policy accept;"),
        "{text}"
    );
    // A single router has none of it.
    let single = render(&state(r#""lan0""#, "", &[(0, 1)]), &addrs);
    assert!(!single
        .chains
        .iter()
        .any(|c| c.name == "input" || c.name == "wan_guard"));
    assert!(!single.to_string().contains("pkttype"));
}
