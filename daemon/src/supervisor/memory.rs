//! The file in which link states outlive the process (see [`crate::engine::LinkMemory`]): next
//! to the control socket, in the runtime directory (tmpfs, so a reboot forgets it), written
//! whole to a temporary file and renamed over the old one, so a crash mid-write leaves the
//! previous version. A file that is older than [`MAX_AGE`], dated in the future or unreadable is
//! ignored with a warning: the daemon then starts as if for the first time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::LinkMemory;

/// The file's name, in the control socket's directory.
const FILE: &str = "links.state";

/// Older memories are not trusted: the links have had time to change.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// While nothing changes, the file is rewritten this often, so its date says the daemon was
/// alive then.
pub const REFRESH: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize, Deserialize)]
struct File {
    /// Seconds since the Unix epoch at which it was written.
    written: f64,
    links: Vec<LinkMemory>,
}

/// Where the daemon whose control socket is `socket` keeps its memory.
pub fn path(socket: &Path) -> PathBuf {
    socket.with_file_name(FILE)
}

/// The memory in `path` and its age, or why it is not used (`Ok(None)`: there is none).
pub fn load(path: &Path) -> Result<Option<(Vec<LinkMemory>, Duration)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let f: File = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let age = crate::control::epoch_now() - f.written;
    if !(0.0..=MAX_AGE.as_secs_f64()).contains(&age) {
        return Err(format!(
            "{}: written {age:.0} s ago, not within the last {} s",
            path.display(),
            MAX_AGE.as_secs()
        ));
    }
    Ok(Some((f.links, Duration::from_secs_f64(age))))
}

/// Write `links` to `path` atomically.
pub fn save(path: &Path, links: Vec<LinkMemory>) -> std::io::Result<()> {
    let f = File {
        written: crate::control::epoch_now(),
        links,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&f)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(state: &str) -> LinkMemory {
        LinkMemory {
            name: "fiber".into(),
            interface: "wan1".into(),
            state: state.into(),
            penalty: 1.5,
        }
    }

    #[test]
    fn saved_memory_loads_back_and_stale_or_corrupt_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("uplinkd-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir.join("control.sock"));
        assert_eq!(p, dir.join("links.state"));
        let _ = std::fs::remove_file(&p);
        assert_eq!(load(&p), Ok(None));
        save(&p, vec![link("down")]).unwrap();
        let (links, age) = load(&p).unwrap().unwrap();
        assert_eq!(links, [link("down")]);
        assert!(age < Duration::from_secs(5), "{age:?}");

        let old = File {
            written: crate::control::epoch_now() - 61.0,
            links: vec![link("down")],
        };
        std::fs::write(&p, serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(load(&p).unwrap_err().contains("not within the last 60 s"));
        std::fs::write(&p, b"{\"written\": 1e99, \"links\": []}").unwrap();
        assert!(load(&p).is_err(), "dated in the future");
        std::fs::write(&p, b"{\"written\": ").unwrap();
        assert!(load(&p).unwrap_err().starts_with(&p.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
