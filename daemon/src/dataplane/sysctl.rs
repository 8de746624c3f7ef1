//! The one kernel setting uplinkd changes: `net.ipv4.conf.<wan>.src_valid_mark = 1` on the
//! interfaces of its links.
//!
//! Reverse-path filtering (`rp_filter` 1, strict, or 2, loose: Debian's default) checks a
//! packet's source with a route lookup. Without `src_valid_mark` that lookup ignores the mark, so
//! it uses the main table: a reply arriving on the backup WAN is dropped when the main table's
//! route to its source points at another WAN (strict) or when the main table has no route to it
//! at all, e.g. after DHCP removed the only default route with the dead WAN's lease (loose).
//! With it, the lookup carries the mark the prerouting chain restored from the flow, finds the
//! flow's own link table, and passes (ip-sysctl.rst: `src_valid_mark`; the kernel ORs the `all`
//! and per-interface values). The previous values are put back on cleanup.

use std::collections::BTreeMap;
use std::fs;

/// `/proc/sys/net/ipv4/conf/<interface>/<key>`.
fn path(interface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{interface}/{key}")
}

fn read(interface: &str, key: &str) -> Option<u32> {
    fs::read_to_string(path(interface, key))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The settings uplinkd changed, with their old values, to restore.
#[derive(Debug, Default)]
pub struct SrcValidMark {
    changed: BTreeMap<String, u32>,
}

impl SrcValidMark {
    /// Make sure reverse-path checks on `interface` see the mark. `Err` says why they cannot
    /// and what that breaks; an interface whose checks are off needs nothing.
    pub fn ensure(&mut self, interface: &str) -> Result<(), String> {
        let on = |i| read(i, "src_valid_mark") == Some(1);
        if on("all") || on(interface) {
            return Ok(());
        }
        let Some(old) = read(interface, "src_valid_mark") else {
            // No IPv4 configuration on the interface (yet): nothing to check against.
            return Ok(());
        };
        match fs::write(path(interface, "src_valid_mark"), "1") {
            Ok(()) => {
                tracing::info!(
                    "set net.ipv4.conf.{interface}.src_valid_mark = 1: reverse-path checks see each flow's link"
                );
                self.changed.entry(interface.to_owned()).or_insert(old);
                Ok(())
            }
            Err(e) => {
                let rp = read("all", "rp_filter")
                    .unwrap_or(0)
                    .max(read(interface, "rp_filter").unwrap_or(0));
                if rp == 0 {
                    return Ok(());
                }
                Err(format!(
                    "cannot set net.ipv4.conf.{interface}.src_valid_mark = 1 ({e}): with rp_filter = {rp} its replies are dropped whenever the main table does not route them back through it"
                ))
            }
        }
    }

    /// Put back what [`ensure`](Self::ensure) changed. Returns the first error.
    pub fn restore(&mut self) -> std::io::Result<()> {
        let mut first = Ok(());
        for (interface, old) in std::mem::take(&mut self.changed) {
            let r = fs::write(path(&interface, "src_valid_mark"), old.to_string());
            // An interface that went away took its setting with it.
            if let Err(e) = r.or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }) {
                first = first.and(Err(e));
            }
        }
        first
    }
}
