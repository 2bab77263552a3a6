//! The deploy kit, each piece checked by the tool its users would run:
//! the systemd units by `systemd-analyze verify` (and their `--check` with
//! the example configuration and secrets). A tool that is missing fails
//! the test with the reason: `scripts/test` installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::binary;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Runs `program` with `args`; a program that is not installed fails the
/// test, naming the package that has it.
fn run(program: &str, args: &[&str], package: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("`{program}` cannot run ({e}): scripts/test installs it ({package})")
        })
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `KEY=value` lines of the example environment file.
fn example_env() -> Vec<(String, String)> {
    std::fs::read_to_string(deploy("systemd/env.example"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Each unit as shipped passes `systemd-analyze verify` without a
/// warning: a copy whose only change is the binary's path, pointed at the
/// binary under test (verify checks that the commands exist).
#[test]
fn the_systemd_units_verify_clean() {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["lastclick.service", "lastclick-worker.service"] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
        for hardening in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "EnvironmentFile=/etc/lastclick/env",
            "ExecStartPre=/usr/local/bin/lastclick ",
        ] {
            assert!(text.contains(hardening), "{unit} lacks {hardening}");
        }
        let copy = dir.path().join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/lastclick", binary())).unwrap();
        let out = run(
            "systemd-analyze",
            &["verify", copy.to_str().unwrap()],
            "Debian's systemd",
        );
        assert_ok(&format!("systemd-analyze verify {unit}"), &out);
        assert!(
            out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let serve = std::fs::read_to_string(deploy("systemd/lastclick.service")).unwrap();
    assert!(serve.contains("StateDirectory=lastclick"));
    let config = std::fs::read_to_string(deploy("lastclick.toml")).unwrap();
    assert!(config.contains("path = \"/var/lib/lastclick/lastclick.db\""));
}

/// What each unit's `ExecStartPre` runs passes with the example
/// configuration and secrets; the worker's refuses a configuration
/// without Redis, and passes once the environment names it.
#[test]
fn the_units_checks_pass_with_the_example_configuration() {
    let config = deploy("lastclick.toml");
    let check = |subcommand: &str, env: &[(String, String)]| {
        Command::new(binary())
            .args([subcommand, "--check", "--config", config.to_str().unwrap()])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let mut env = example_env();
    assert_ok("serve --check", &check("serve", &env));
    let embedded = check("worker", &env);
    assert!(!embedded.status.success());
    assert!(String::from_utf8_lossy(&embedded.stderr).contains("redis.url"));
    env.push((
        "LASTCLICK_REDIS__URL".into(),
        "redis://127.0.0.1:6379/".into(),
    ));
    assert_ok("worker --check", &check("worker", &env));
}
