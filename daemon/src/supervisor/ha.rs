//! With `[ha]`: keepalived's track files, which tell it how healthy this router's links are.

use std::io;
use std::path::Path;

use tracing::{info, warn};

use crate::config::Ha;

/// What the track files say now, and the last error writing them (said once).
#[derive(Debug, Default)]
pub struct Track {
    written: Option<(u32, bool)>,
    error: Option<String>,
}

impl Track {
    /// Write `(weight, fault)` if it is not what the files say already. A failed write is
    /// retried the next time and logged when its error changes.
    pub fn update(&mut self, ha: &Ha, now: (u32, bool)) {
        if self.written == Some(now) {
            return;
        }
        let (weight, fault) = now;
        let r = replace(&ha.weight_file, weight)
            .and_then(|()| replace(&ha.fault_file, u32::from(fault)));
        match r {
            Ok(()) => {
                info!(
                    "told keepalived: {weight} usable link{}{}",
                    if weight == 1 { "" } else { "s" },
                    if fault { ", fault" } else { "" }
                );
                self.written = Some(now);
                self.error = None;
            }
            Err(e) => {
                let e = format!("cannot write keepalived's track files: {e}");
                if self.error.as_ref() != Some(&e) {
                    warn!("{e}");
                    self.error = Some(e);
                }
            }
        }
    }

    /// uplinkd stops: fault, so the peer takes over within keepalived's skew time.
    pub fn stop(&mut self, ha: &Ha) {
        let weight = self.written.map_or(0, |(w, _)| w);
        self.written = None;
        self.update(ha, (weight, true));
    }
}

/// Say fault (1) in `ha.fault_file`, whatever uplinkd said last: `uplinkd --ha-fault`, which
/// the unit runs after uplinkd ended however it did (a kill or a crash cannot write it).
pub fn fault(ha: &Ha) -> io::Result<()> {
    replace(&ha.fault_file, 1)
}

/// Replace `path` by a file holding `value`: written beside it, then renamed over it, so
/// keepalived (inotify) never reads a half-written file.
fn replace(path: &Path, value: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A pair whose track files are in `dir`.
    fn ha(dir: &Path) -> Ha {
        let text = format!(
            "[[link]]\nname = \"wan1\"\ninterface = \"wan1\"\ntargets = [\"203.0.113.10\"]\n\
             [lan]\ninterfaces = [\"lan0\"]\n[ha]\nlan_vip = \"10.98.0.1\"\n\
             weight_file = {:?}\nfault_file = {:?}\n",
            dir.join("vrrp-weight"),
            dir.join("vrrp-fault")
        );
        crate::config::parse(&text).unwrap().ha.unwrap()
    }

    #[test]
    fn the_files_are_replaced_only_when_their_values_change_and_say_fault_at_stop() {
        let dir = std::env::temp_dir().join(format!("uplinkd-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ha = ha(&dir);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let mut t = Track::default();
        t.update(&ha, (2, false));
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("2\n".into(), "0\n".into())
        );
        // Unchanged: not written again (an outside edit stays until the value changes).
        std::fs::write(&ha.weight_file, "7\n").unwrap();
        t.update(&ha, (2, false));
        assert_eq!(read(&ha.weight_file), "7\n");
        t.update(&ha, (0, true));
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("0\n".into(), "1\n".into())
        );
        t.update(&ha, (1, false));
        t.stop(&ha);
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("1\n".into(), "1\n".into())
        );
        // Only the two files: the temporary ones were renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_retried_later() {
        let dir =
            std::env::temp_dir().join(format!("uplinkd-track-missing-{}", std::process::id()));
        let ha = ha(&dir);
        let mut t = Track::default();
        t.update(&ha, (1, false));
        assert!(t.error.as_ref().unwrap().contains("vrrp-weight"));
        std::fs::create_dir_all(&dir).unwrap();
        t.update(&ha, (1, false));
        assert_eq!(std::fs::read_to_string(&ha.fault_file).unwrap(), "0\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
