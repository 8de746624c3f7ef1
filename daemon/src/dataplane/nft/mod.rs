//! uplinkd's nftables table, `inet uplinkd`, written in one atomic batch.
//!
//! Three layers, one module each:
//! - [`plan`]: the desired state rendered as a [`Ruleset`] (chains of rules of [`Op`]s), pure.
//! - [`encode`]: each `Op` as nftnl expressions, and as nft text (snapshot tests, debug logs).
//! - [`batch`]: the netlink transaction that writes the table, updating it in place when it can.
//!
//! The stale sets' elements are added by the resets (`reset.rs`); the table defines the sets.

mod batch;
mod encode;
mod plan;

use std::ffi::CStr;

pub use super::reset::{add_stale, StaleKey4, StaleKey6, STALE4, STALE6, STALE_TIMEOUT_MS};
pub(super) use batch::send;
pub use batch::{delete, exists, replace};
pub use plan::{render, ChainPlan, DynOp, Op, Ruleset, StickySet};

/// The one table uplinkd owns (DESIGN.md §3).
pub const TABLE: &CStr = c"uplinkd";

const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const TCP_FLAG_SYN: u8 = 0x02;
