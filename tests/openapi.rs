//! The OpenAPI document (`docs/openapi.json`, served at
//! `GET /v1/openapi.json`): valid OpenAPI 3.1 by `openapi-spec-validator`,
//! naming every `/v1` route the router has, and true of the live service
//! by schemathesis, run with the admin's, the merchant's and a partner's
//! token: every operation, no 5xx, every status code and content type
//! documented, every response conformant to its schema.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::{assert_ok, run_tool as run, TestApp, ADMIN, MERCHANT};

fn manifest(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_document_is_valid_and_names_every_route() {
    let doc = manifest("docs/openapi.json");
    let out = run(
        "openapi-spec-validator",
        &[doc.to_str().unwrap()],
        "pip install openapi-spec-validator",
    );
    assert_ok("openapi-spec-validator", &out);
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(doc).unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let documented: BTreeSet<String> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // The router's `/v1` routes, as `src/api/mod.rs` declares them.
    let router = std::fs::read_to_string(manifest("src/api/mod.rs")).unwrap();
    let routed: BTreeSet<String> = router
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .filter(|path| path.starts_with("/v1/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(documented, routed);
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                operation["x-roles"].is_array(),
                "{method} {path} names no roles"
            );
            let codes = operation["responses"].as_object().unwrap();
            if path != "/v1/openapi.json" {
                for code in ["401", "403", "429"] {
                    assert!(codes.contains_key(code), "{method} {path} lacks {code}");
                }
            }
        }
    }
}

/// How many operations the document describes, less the document's own
/// (which schemathesis does not count).
fn operations() -> usize {
    let text = std::fs::read_to_string(manifest("docs/openapi.json")).unwrap();
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    let methods = ["get", "post", "put", "patch", "delete"];
    document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| *path != "/v1/openapi.json")
        .map(|(_, item)| methods.iter().filter(|m| item.get(**m).is_some()).count())
        .sum()
}

/// schemathesis with one token; `config` (a schemathesis.toml) when given.
fn schemathesis(url: &str, token: &str, config: Option<&Path>) -> Output {
    let mut command = Command::new("schemathesis");
    if let Some(config) = config {
        command.arg("--config-file").arg(config);
    }
    command
        .args(["run", url, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap_or_else(|e| panic!("schemathesis cannot run ({e}): scripts/test installs it (pip install schemathesis)"))
}

#[tokio::test]
async fn schemathesis_finds_the_live_service_true_to_the_document() {
    // The rate limit would answer most generated requests 429.
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_API__RATE_LIMIT", "1000000"),
        ("LASTCLICK_API__RATE_BURST", "1000000"),
    ])
    .await;
    let partner = app.partner_earning("acme", &["300.00"]).await;
    let url = app.url("/v1/openapi.json");
    let dir = tempfile::tempdir().unwrap();
    // A partner's own id in every `{id}`, so that its calls reach past 403.
    let own = dir.path().join("partner.toml");
    std::fs::write(&own, "[parameters]\n\"path.id\" = \"acme\"\n").unwrap();
    for (role, token, config) in [
        ("admin", ADMIN, None),
        ("merchant", MERCHANT, None),
        ("partner", partner.as_str(), Some(own.as_path())),
    ] {
        let out = schemathesis(&url, token, config);
        assert_ok(&format!("schemathesis as the {role}"), &out);
        let report = String::from_utf8_lossy(&out.stdout);
        let tested = format!("Tested: {}", operations());
        assert!(
            report.contains(&tested),
            "{role}: not every operation:\n{report}"
        );
    }
}
