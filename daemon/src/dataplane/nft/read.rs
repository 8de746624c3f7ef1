//! Reading back what is in the kernel: a set's elements (NFT_MSG_GETSETELEM), for the sets the
//! packet path fills; the ruleset generation (NFT_MSG_GETGEN), which every change of any table
//! bumps; and a digest of our table's chains, rules and rule lists, to notice someone else's
//! edits.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::Ipv4Addr;

use super::{with_socket, TABLE};
use crate::dataplane::netlink::{self, attrs, find, Netlink};

/// nfnetlink subsystem of nf_tables and its messages (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETGEN: u16 = 16;
const NFPROTO_INET: u8 = 1;
/// enum nft_set_elem_list_attributes, nft_list_attributes, nft_set_elem_attributes,
/// nft_data_attributes, nft_gen_attributes, nft_chain_attributes, nft_rule_attributes.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_GEN_ID: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The ruleset generation: it changes with every committed change of any table.
pub fn generation() -> io::Result<u32> {
    let mut gen = None;
    // Not a dump: one answer, then the acknowledgement.
    with_socket(|s| {
        s.query(nft(NFT_MSG_GETGEN), &[0, 0, 0, 0], |m| {
            gen = m
                .get(4..)
                .and_then(|b| find(b, NFTA_GEN_ID))
                .and_then(|v| v.try_into().ok())
                .map(u32::from_be_bytes);
        })
    })?;
    gen.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no generation in the answer"))
}

/// A digest of what our table does: each chain's name, hook, type and policy, each rule's chain
/// and expressions, in the kernel's order (handles and positions left out), and the elements of
/// the constant sets `sets` (the rules' lists, the link marks' map). Equal digests mean equal tables; `None`: the
/// table does not exist. The dynamic sets are left out: the packet path changes them.
pub fn digest(sets: &[String]) -> io::Result<Option<u64>> {
    with_socket(|s| digest_on(s, sets))
}

fn digest_on(s: &mut Netlink, sets: &[String]) -> io::Result<Option<u64>> {
    let mut h = DefaultHasher::new();
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    netlink::put_attr(&mut payload, NFTA_CHAIN_TABLE, TABLE.to_bytes_with_nul());
    let mut chains = 0;
    let r = s.dump(nft(NFT_MSG_GETCHAIN), &payload, |m| {
        let Some(body) = ours(m, NFTA_CHAIN_TABLE) else {
            return;
        };
        for kind in [
            NFTA_CHAIN_NAME,
            NFTA_CHAIN_HOOK,
            NFTA_CHAIN_POLICY,
            NFTA_CHAIN_TYPE,
        ] {
            find(body, kind).hash(&mut h);
        }
        chains += 1;
    });
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        r => r?,
    }
    if chains == 0 {
        return Ok(None);
    }
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    netlink::put_attr(&mut payload, NFTA_RULE_TABLE, TABLE.to_bytes_with_nul());
    s.dump(nft(NFT_MSG_GETRULE), &payload, |m| {
        let Some(body) = ours(m, NFTA_RULE_TABLE) else {
            return;
        };
        find(body, NFTA_RULE_CHAIN).hash(&mut h);
        find(body, NFTA_RULE_EXPRESSIONS).hash(&mut h);
    })?;
    for set in sets {
        set.hash(&mut h);
        let r = s.dump(nft(NFT_MSG_GETSETELEM), &elements_of(set), |m| {
            let list = m
                .get(4..)
                .and_then(|b| find(b, NFTA_SET_ELEM_LIST_ELEMENTS));
            // Element by element: how the kernel splits a dump into messages is not content.
            for (_, elem) in attrs(list.unwrap_or_default()) {
                elem.hash(&mut h);
            }
        });
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => "missing".hash(&mut h),
            r => r?,
        }
    }
    Ok(Some(h.finish()))
}

/// The request for the elements of set `set` of our table.
fn elements_of(set: &str) -> Vec<u8> {
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    netlink::put_attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_TABLE,
        TABLE.to_bytes_with_nul(),
    );
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &name);
    payload
}

/// The attributes of an answer about our table (family inet, table attribute `table_attr`
/// naming it); `None` for another table's (a dump may not filter by table).
fn ours(m: &[u8], table_attr: u16) -> Option<&[u8]> {
    let body = m.get(4..)?;
    let named = find(body, table_attr)? == TABLE.to_bytes_with_nul();
    (m.first() == Some(&NFPROTO_INET) && named).then_some(body)
}

/// The IPv4 addresses in set `set` of our table; none when the set does not exist.
pub fn ipv4_elements(set: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    with_socket(|s| {
        let r = s.dump(nft(NFT_MSG_GETSETELEM), &elements_of(set), |m| {
            out.extend(parse(m))
        });
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            r => r.map(|()| out),
        }
    })
}

/// The 4-byte keys of one GETSETELEM answer (after the netlink header).
fn parse(payload: &[u8]) -> Vec<Ipv4Addr> {
    let Some(list) = payload
        .get(4..)
        .and_then(|b| find(b, NFTA_SET_ELEM_LIST_ELEMENTS))
    else {
        return Vec::new();
    };
    attrs(list)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| find(find(elem, NFTA_SET_ELEM_KEY)?, NFTA_DATA_VALUE))
        .filter_map(|key| <[u8; 4]>::try_from(key).ok().map(Ipv4Addr::from))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dataplane::netlink::{put_attr, NLA_F_NESTED};

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Vec::new();
        put_attr(&mut b, kind | NLA_F_NESTED, &parts.concat());
        b
    }

    #[test]
    fn keys_of_an_answer_are_read_and_odd_ones_skipped() {
        let key = |bytes: &[u8]| {
            let mut value = Vec::new();
            put_attr(&mut value, NFTA_DATA_VALUE, bytes);
            nested(NFTA_LIST_ELEM, &[nested(NFTA_SET_ELEM_KEY, &[value])])
        };
        let list = nested(
            NFTA_SET_ELEM_LIST_ELEMENTS,
            &[
                key(&[192, 0, 2, 99]),
                key(&[1, 2, 3]),
                key(&[198, 51, 100, 1]),
            ],
        );
        let payload = [vec![NFPROTO_INET, 0, 0, 0], list].concat();
        assert_eq!(
            parse(&payload),
            [Ipv4Addr::new(192, 0, 2, 99), Ipv4Addr::new(198, 51, 100, 1)]
        );
        assert!(parse(&payload[..3]).is_empty());
        assert!(
            parse(&payload[..payload.len() - 5]).len() <= 2,
            "a cut answer is no panic"
        );
    }
}
