//! The deploy kit, each piece checked by the tool its users would run:
//! the systemd units by `systemd-analyze verify` (and their `--check` with
//! the example configuration and secrets). A tool that is missing fails
//! the test with the reason: `scripts/test` installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_ok, binary, run_tool as run};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
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

/// Every `lastclick_…` metric name in `text` (a histogram's series by
/// their family's name).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("lastclick_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = name
            .strip_suffix("_bucket")
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(&name);
        names.insert(family.to_owned());
    }
    names
}

/// The dashboard's PromQL expressions.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/lastclick.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "lastclick");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels {
        assert!(
            panel["title"].is_string() && panel["gridPos"]["w"].is_u64(),
            "{panel}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    queries
}

/// `promtool check rules` on each query as a recording rule: the
/// dashboard's PromQL parses.
fn check_promql(queries: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let query = query.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    let path = dir.path().join("dashboard.yml");
    std::fs::write(&path, rules).unwrap();
    let out = run(
        "promtool",
        &["check", "rules", path.to_str().unwrap()],
        "Debian's prometheus",
    );
    assert_ok("promtool check rules (the dashboard's queries)", &out);
}

/// The Grafana dashboard's and the alerts' queries parse, and every metric
/// they read is one the real service exports (after a little traffic: a
/// click, a signup and payment, a payout request).
#[tokio::test]
async fn the_dashboard_and_alerts_read_only_exported_metrics() {
    let queries = dashboard_queries();
    check_promql(&queries);
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut wanted = metric_names(&queries.join("\n"));
    wanted.extend(metric_names(&alerts));

    let app = common::TestApp::spawn().await;
    let acme = app.partner_earning("acme", &["300.00"]).await;
    app.usd_when("acme", "available", "60.00").await;
    let (status, _) = app
        .send_json(
            "POST",
            "/v1/partners/acme/payouts",
            Some(&acme),
            serde_json::json!({"currency": "USD"}),
        )
        .await;
    assert_eq!(status, 201);
    let exported: std::collections::BTreeSet<String> = app
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(missing.is_empty(), "queried, not exported: {missing:?}");
    for panel in [
        "lastclick_redirects_total",
        "lastclick_redirect_duration_seconds",
        "lastclick_click_buffer_depth",
        "lastclick_clicks_dropped_total",
        "lastclick_clicks_written_total",
        "lastclick_store_errors_total",
        "lastclick_worker_lag_events",
        "lastclick_worker_pending_events",
        "lastclick_events_processed_total",
        "lastclick_commissions_total",
        "lastclick_payouts_waiting",
        "lastclick_webhook_deliveries_total",
        "lastclick_webhook_oldest_undelivered_seconds",
    ] {
        assert!(wanted.contains(panel), "the dashboard shows no {panel}");
    }
}

/// The alert rules load, and their unit tests (`alerts.test.yml`: each
/// alert fires on trouble and stays quiet otherwise) pass.
#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = deploy("prometheus");
    let check = run(
        "promtool",
        &["check", "rules", dir.join("alerts.yml").to_str().unwrap()],
        "Debian's prometheus",
    );
    assert_ok("promtool check rules alerts.yml", &check);
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ok("promtool test rules alerts.test.yml", &test);
    for alert in [
        "LastclickClicksDropped",
        "LastclickClickBufferFilling",
        "LastclickStoreErrors",
        "LastclickNotReady",
        "LastclickWorkerLagGrowing",
        "LastclickEventsDeadLettered",
        "LastclickRedirectSlow",
        "LastclickPayoutsWaiting",
        "LastclickWebhooksBehind",
    ] {
        let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} untested"
        );
    }
}

/// Copies `files` (paths under `deploy/`) into a fresh directory, keeping
/// their layout.
fn deploy_copy(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(deploy(file), &to).unwrap();
    }
    dir
}

/// `yaml` as JSON, through Python's YAML parser (which podman-compose
/// brings).
fn yaml_to_json(yaml: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = python.wait_with_output().unwrap();
    assert_ok("reading YAML", &out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The compose file as `podman-compose config` resolves it: Redis with AOF
/// and no eviction, two serves, two workers in Redis mode, a Prometheus
/// whose configuration (with the alert rules) `promtool` accepts.
#[test]
fn the_compose_file_resolves_and_its_prometheus_config_checks() {
    let dir = deploy_copy(&[
        "compose.yaml",
        "compose/prometheus.yml",
        "compose/lastclick.env.example",
        "prometheus/alerts.yml",
    ]);
    let root = dir.path();
    std::fs::copy(
        root.join("compose/lastclick.env.example"),
        root.join("compose/lastclick.env"),
    )
    .unwrap();
    let out = Command::new("podman-compose")
        .args(["-f", "compose.yaml", "config"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("podman-compose cannot run ({e}): scripts/test installs it (pip install podman-compose, with Debian's podman)"));
    assert_ok("podman-compose config", &out);
    let compose = yaml_to_json(&out.stdout);
    let services = compose["services"].as_object().expect("services");
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "prometheus",
            "redis",
            "serve-1",
            "serve-2",
            "worker-1",
            "worker-2"
        ]
    );
    let redis = services["redis"]["command"].to_string();
    for flag in [
        "--appendonly",
        "\"yes\"",
        "--maxmemory-policy",
        "noeviction",
    ] {
        assert!(redis.contains(flag), "redis lacks {flag}: {redis}");
    }
    for (service, command) in [
        ("serve-1", "serve"),
        ("serve-2", "serve"),
        ("worker-1", "worker"),
        ("worker-2", "worker"),
    ] {
        let s = &services[service];
        assert_eq!(s["command"][0], command, "{service}");
        let env = &s["environment"];
        assert_eq!(
            env["LASTCLICK_REDIS__URL"], "redis://redis:6379/",
            "{service}"
        );
        assert!(s["depends_on"].to_string().contains("redis"), "{service}");
    }

    // Prometheus's own configuration, with the rule file where it is here.
    let prometheus = root.join("compose/prometheus.yml");
    let text = std::fs::read_to_string(&prometheus).unwrap();
    assert!(text.contains("serve-1:9090") && text.contains("worker-2:9091"));
    let local = text.replace(
        "/etc/prometheus/alerts.yml",
        root.join("prometheus/alerts.yml").to_str().unwrap(),
    );
    std::fs::write(&prometheus, local).unwrap();
    let check = run(
        "promtool",
        &["check", "config", prometheus.to_str().unwrap()],
        "Debian's prometheus",
    );
    assert_ok("promtool check config", &check);
}

/// Every manifest the kustomization lists validates against the
/// Kubernetes schemas (strict: no unknown field), the serve Deployment
/// probes the admin port, and the configuration the manifests mount
/// passes both checks with the example secrets.
#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let dir = deploy("kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let listed = yaml_to_json(kustomization.as_bytes());
    let resources: Vec<String> = listed["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()).to_string_lossy().into_owned())
        .collect();
    assert!(resources.len() >= 6, "{resources:?}");
    let mut args = vec!["--strict", "-k", "1.30.0"];
    args.extend(resources.iter().map(String::as_str));
    let out = run(
        "kubernetes-validate",
        &args,
        "pip install kubernetes-validate",
    );
    assert_ok("kubernetes-validate", &out);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        report.matches(" passed ").count(),
        resources.len(),
        "{report}"
    );

    let serve = yaml_to_json(&std::fs::read(dir.join("serve.yaml")).unwrap());
    let container = &serve["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    assert!(container["resources"]["limits"]["cpu"].is_string());
    for kind in ["PodDisruptionBudget", "HorizontalPodAutoscaler"] {
        let found = resources.iter().any(|r| {
            std::fs::read_to_string(r)
                .unwrap()
                .contains(&format!("kind: {kind}"))
        });
        assert!(found, "no {kind}");
    }

    let env: Vec<(String, String)> = std::fs::read_to_string(dir.join("secrets.env.example"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for subcommand in ["serve", "worker"] {
        let out = Command::new(binary())
            .args([subcommand, "--check", "--config"])
            .arg(dir.join("lastclick.toml"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert_ok(&format!("{subcommand} --check"), &out);
    }
}

/// A working container and image, removed when dropped.
struct BuiltImage {
    tag: String,
    container: Option<String>,
}

impl Drop for BuiltImage {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            let _ = Command::new("buildah").args(["umount", container]).output();
            let _ = Command::new("buildah").args(["rm", container]).output();
        }
        let _ = Command::new("buildah")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

fn buildah(args: &[&str]) -> String {
    let out = run("buildah", args, "Debian's buildah");
    assert_ok(&format!("buildah {}", args.join(" ")), &out);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The image, built as `deploy/container/build` builds it (from the binary
/// under test), is checked without a container runtime, which these
/// machines cannot run: its configuration (non-root user, `serve` by
/// default, the state volume), then its filesystem, mounted, with the
/// binary run from it under `chroot` as the image's user: `serve --check`
/// and `worker --check`, then `serve` answering `/healthz`.
#[test]
fn the_container_image_runs_serve_from_its_own_filesystem() {
    let uid = run("id", &["-u"], "coreutils");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the image test mounts the image (buildah mount) and runs chroot: it needs root"
    );
    let tag = format!("localhost/lastclick-test:{}", std::process::id());
    let mut image = BuiltImage {
        tag: tag.clone(),
        container: None,
    };
    let build = Command::new(deploy("container/build"))
        .args([binary(), &tag])
        .env("BUILDER", "buildah")
        .output()
        .unwrap();
    assert_ok("deploy/container/build", &build);

    let config: serde_json::Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &tag])).unwrap();
    let oci = &config["OCIv1"]["config"];
    assert_eq!(oci["User"], "65532:65532");
    assert_eq!(
        oci["Entrypoint"],
        serde_json::json!(["/usr/local/bin/lastclick"])
    );
    assert_eq!(oci["Cmd"], serde_json::json!(["serve"]));
    assert!(oci["Volumes"]["/var/lib/lastclick"].is_object(), "{oci}");
    let image_env: Vec<(String, String)> = oci["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let container = buildah(&["from", &tag]);
    image.container = Some(container.clone());
    let root = PathBuf::from(buildah(&["mount", &container]));
    let size: u64 = std::fs::metadata(root.join("usr/local/bin/lastclick"))
        .unwrap()
        .len();
    assert!(size < 60_000_000, "the binary is stripped: {size} bytes");
    // As the image's user, with the image's environment, as a runtime
    // would start it; the ports are moved to free loopback ones.
    let in_image = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = Command::new("chroot");
        command
            .arg("--userspec=65532:65532")
            .arg(&root)
            .arg("/usr/local/bin/lastclick")
            .args(args)
            .env_clear()
            .envs(image_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .env("LASTCLICK_LISTEN__HTTP", "127.0.0.1:0")
            .env("LASTCLICK_LISTEN__ADMIN", "127.0.0.1:0");
        command
    };
    let check = in_image(&["serve", "--check"], &[]).output().unwrap();
    assert_ok("serve --check in the image", &check);
    let redis = [
        ("LASTCLICK_REDIS__URL", "redis://127.0.0.1:6379/"),
        (
            "LASTCLICK_COOKIE__SECRETS",
            "a-cookie-secret-0123456789abcdef",
        ),
        (
            "LASTCLICK_AUTH__ADMIN_TOKEN",
            "an-admin-token-0123456789abcdef",
        ),
        (
            "LASTCLICK_AUTH__MERCHANT_TOKEN",
            "a-merchant-token-0123456789abcdef",
        ),
    ];
    let check = in_image(&["worker", "--check"], &redis).output().unwrap();
    assert_ok("worker --check in the image", &check);

    let mut serve = in_image(&["serve"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let admin = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("admin=http://"))
        .unwrap_or_else(|| panic!("no listening line: {line}"))
        .to_owned();
    let answer = common::raw_exchange(
        &admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let _ = serve.kill();
    let _ = serve.wait();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    assert!(
        root.join("var/lib/lastclick/lastclick.db").exists(),
        "the store's file is in the state volume"
    );
}
