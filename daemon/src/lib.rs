//! uplinkd: multi-WAN failover. See DESIGN.md in the team's shared folder for the architecture.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod engine;
pub mod history;
pub mod supervisor;
