//! uplinkd: multi-WAN failover. See DESIGN.md in the team's shared folder for the architecture.

pub mod config;
pub mod dataplane;
pub mod engine;
