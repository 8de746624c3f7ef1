//! The binaries' command-line contract (DESIGN.md §4, §5), without root.

use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uplinkd-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--check-config", example])
        .output()
        .expect("run uplinkd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (2 links, 1 policy, 0 rules; worst-case blackhole detection 900 ms)"),
        "{stdout}"
    );
}

#[test]
fn check_config_reports_every_error_with_file_and_line() {
    let bad = tmp(
        "bad.toml",
        "[[link]]\nname = \"fiber\"\ninterface = \"wan1\"\ntargets = [\"nope\"]\n\n[lan]\ninterfaces = []\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .expect("run uplinkd");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:4: link[0].targets: \"nope\"")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:7: lan.interfaces: must name at least one interface"
        )),
        "{stderr}"
    );
    std::fs::remove_file(bad).ok();
}

#[test]
fn daemon_refuses_to_start_with_an_invalid_config() {
    let bad = tmp("start.toml", "[[link]]\nname = 3\n");
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run uplinkd");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2:") && stderr.contains("refusing to start"),
        "{stderr}"
    );
    std::fs::remove_file(bad).ok();
}

/// `uplinkd --check-config FILE`: exit code and stderr.
fn check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .arg("--check-config")
        .arg(file)
        .output()
        .expect("run uplinkd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_says_why_a_file_cannot_be_read_without_a_line() {
    let missing = std::env::temp_dir().join("uplinkd-cli-no-such-file.toml");
    let dir = std::env::temp_dir();
    for (file, why) in [
        (missing, "no such file or directory"),
        (dir, "is a directory"),
    ] {
        let (code, stderr) = check(&file);
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr.trim_end(),
            format!("{}: cannot read the file: {why}", file.display())
        );
    }
}

#[test]
fn check_config_points_at_the_first_byte_that_is_not_utf8() {
    let p = std::env::temp_dir().join(format!("uplinkd-cli-{}-latin1.toml", std::process::id()));
    std::fs::write(&p, b"[[link]]\nname = \"fiber\"\n# caf\xe9 \xff\n").expect("write temp file");
    let (code, stderr) = check(&p);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:3: byte 0xe9 at column 6 is not UTF-8 (TOML files are UTF-8)",
            p.display()
        )
    );
    std::fs::remove_file(p).ok();
}

#[test]
fn check_config_names_the_key_of_a_type_error_or_duplicate() {
    let bad = tmp(
        "dup.toml",
        "[[link]]\nname = \"fiber\"\ninterface = \"wan1\"\nname = \"lte\"\n",
    );
    let (code, stderr) = check(&bad);
    assert_eq!(code, Some(1));
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:4: link[0].name: duplicate key: first defined on line 2"
        )),
        "{stderr}"
    );
    std::fs::remove_file(bad).ok();
}

#[test]
fn uplinkctl_exits_2_when_it_cannot_connect() {
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkctl"))
        .args(["--socket", "/nonexistent/uplinkd.sock", "status"])
        .output()
        .expect("run uplinkctl");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot talk to uplinkd"));
}

#[test]
fn log_format_takes_text_or_json_only() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--log-format", "json", "--check-config", example])
        .output()
        .expect("run uplinkd");
    assert!(out.status.success());
    let bad = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--log-format", "yaml", "--check-config", example])
        .output()
        .expect("run uplinkd");
    assert_eq!(bad.status.code(), Some(2), "clap refuses an unknown format");
}

#[test]
fn the_pair_commands_without_ha_say_so_or_do_nothing() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");
    let dir = std::env::temp_dir().join(format!("uplinkd-cli-{}-render", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--config", example, "--render-ha"])
        .arg(&dir)
        .output()
        .expect("run uplinkd");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot render the pair's configuration: the configuration has no [ha]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.exists(), "nothing is written");
    // The unit's ExecStopPost on a single router: nothing to say, success.
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--config", example, "--ha-fault"])
        .output()
        .expect("run uplinkd");
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    // Both need the configuration.
    let out = Command::new(env!("CARGO_BIN_EXE_uplinkd"))
        .args(["--ha-fault"])
        .output()
        .expect("run uplinkd");
    assert_eq!(out.status.code(), Some(2));
}
