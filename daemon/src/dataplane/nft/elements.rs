//! Reading a set's elements back from the kernel (NFT_MSG_GETSETELEM), for the sets the
//! packet path fills: where another table's NAT translated a link's flows.

use std::io;
use std::net::Ipv4Addr;

use rtnetlink::sys::protocols::NETLINK_NETFILTER;

use super::TABLE;
use crate::dataplane::netlink::{self, attrs, find, Netlink};

/// nfnetlink subsystem of nf_tables, and its "get set elements" message
/// (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFPROTO_INET: u8 = 1;
/// enum nft_set_elem_list_attributes, nft_list_attributes, nft_set_elem_attributes,
/// nft_data_attributes.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// The IPv4 addresses in set `set` of our table; none when the set does not exist.
pub fn ipv4_elements(set: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    netlink::put_attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_TABLE,
        TABLE.to_bytes_with_nul(),
    );
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    netlink::put_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &name);
    let mut out = Vec::new();
    let r = Netlink::open(NETLINK_NETFILTER, 1 << 16)?.dump(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        &payload,
        |m| out.extend(parse(m)),
    );
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
        r => r.map(|()| out),
    }
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
