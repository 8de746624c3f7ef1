//! uplinkd's nftables table, `inet uplinkd`, written in one atomic batch.
//!
//! Three layers:
//! - `plan`: the desired state rendered as a [`Ruleset`]: chains of rules made of [`Op`]s.
//!   Pure; the supervisor compares rulesets to decide whether to write.
//! - `encode`: each `Op` lowered once into `encode::Expr`s, which mirror the kernel's
//!   expressions one to one. The nftnl expressions sent are a 1:1 map of them, and the text
//!   (`text`, for the snapshot tests and debug logs) is printed from them, recognising nft(8)'s
//!   phrases and printing anything else raw: there is no second description of an `Op` to drift
//!   from what is sent, and a change to the encoding shows in the snapshots.
//! - `batch`: the netlink transaction that writes the table, in place when it can.
//!
//! The stale sets' elements are added by the resets (`reset.rs`); the table defines the sets.
//! `read` reads back what is in the kernel: set elements the packet path added, the ruleset
//! generation and a digest of our table (to notice edits by someone else).

mod batch;
mod encode;
#[cfg(test)]
mod op_tests;
mod plan;
mod read;
mod steer;
#[cfg(test)]
mod tests;
mod text;

use std::ffi::CStr;
use std::io;
use std::sync::Mutex;

use rtnetlink::sys::protocols::NETLINK_NETFILTER;

use super::netlink::Netlink;

pub use super::reset::{add_stale, StaleKey4, StaleKey6, STALE4, STALE6, STALE_TIMEOUT_MS};
pub(super) use batch::send;
pub use batch::{delete, replace};
pub use plan::{foreign_nat_set, render, AddrSet, ChainPlan, DynOp, Op, Ruleset, LINK_MARKS};
pub use read::{digest, generation, ipv4_elements};

/// The daemon's nf_tables socket, kept open: closing a netlink socket of the netfilter family
/// waits while the kernel releases what the last transaction replaced (an RCU grace period:
/// 8-12 ms of a one-prefix reload, measured on this kernel), so every write and read of the
/// table shares one that is never closed. A call that fails drops it (nothing of its exchange
/// is left to read by the next); the next call opens another.
static SOCKET: Mutex<Option<Netlink>> = Mutex::new(None);

/// Run `f` on the daemon's nf_tables socket (one call at a time).
fn with_socket<T>(f: impl FnOnce(&mut Netlink) -> io::Result<T>) -> io::Result<T> {
    let mut kept = SOCKET.lock().unwrap_or_else(|p| p.into_inner());
    let mut s = match kept.take() {
        Some(s) => s,
        None => Netlink::open(NETLINK_NETFILTER, 1 << 16)?,
    };
    let r = f(&mut s);
    if r.is_ok() {
        *kept = Some(s);
    }
    r
}

/// The one table uplinkd owns (DESIGN.md §3).
pub const TABLE: &CStr = c"uplinkd";

const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const TCP_FLAG_SYN: u8 = 0x02;
