//! Webhook endpoints against the real binary, on the embedded store and on
//! Redis: registered by the admin with the events they want, https only
//! unless `webhooks.allow_http`, the signing secret answered once, listed
//! without it, at most 20, and deleted.

mod common;

use common::{Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

async fn register(app: &TestApp, body: Value) -> (u16, Value) {
    app.send_json("POST", "/v1/webhooks", Some(ADMIN), body)
        .await
}

async fn endpoints_are_registered_listed_and_deleted(setup: Stack) {
    let app = &setup.app;
    let (status, created) = register(
        app,
        json!({"url": "http://127.0.0.1:9/hooks",
               "events": ["payout.paid", "commission.created", "payout.paid"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"), "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{created}"
    );
    assert_eq!(
        created["events"],
        json!(["commission.created", "payout.paid"])
    );

    let (status, list) = app.get("/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let listed = &list["webhooks"][0];
    assert_eq!(
        (&listed["id"], &listed["url"]),
        (&json!(id), &json!("http://127.0.0.1:9/hooks"))
    );
    assert!(
        listed.get("secret").is_none(),
        "the secret is shown once: {list}"
    );

    for (body, code) in [
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["commission.deleted"]}),
            "invalid_events",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "events": []}),
            "invalid_events",
        ),
        (
            json!({"url": "ftp://127.0.0.1/", "events": ["payout.paid"]}),
            "invalid_url",
        ),
        (
            json!({"url": "https://u:p@hooks.example/", "events": ["payout.paid"]}),
            "invalid_url",
        ),
    ] {
        let (status, answer) = register(app, body.clone()).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!(code)),
            "{body}"
        );
    }
    let (status, _) = app
        .send_json(
            "POST",
            "/v1/webhooks",
            Some(MERCHANT),
            json!({"url": "https://a.example/", "events": ["payout.paid"]}),
        )
        .await;
    assert_eq!(status, 403);

    for n in 1..20 {
        let url = format!("https://hooks{n}.example/lastclick");
        let (status, body) = register(app, json!({"url": url, "events": ["payout.paid"]})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = register(
        app,
        json!({"url": "https://one-more.example/", "events": ["payout.paid"]}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("too_many_webhooks"))
    );

    let path = format!("/v1/webhooks/{id}");
    let (status, _) = app
        .send_json("DELETE", &path, Some(ADMIN), json!(null))
        .await;
    assert_eq!(status, 204);
    let (status, body) = app
        .send_json("DELETE", &path, Some(ADMIN), json!(null))
        .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (_, list) = app.get("/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 19);
}

#[tokio::test]
async fn embedded_endpoints_are_registered_listed_and_deleted() {
    let setup = Stack::embedded_with(&[("LASTCLICK_WEBHOOKS__ALLOW_HTTP", "true")]).await;
    endpoints_are_registered_listed_and_deleted(setup).await;
}

#[tokio::test]
async fn redis_endpoints_are_registered_listed_and_deleted() {
    let setup = Stack::redis_with(&[("LASTCLICK_WEBHOOKS__ALLOW_HTTP", "true")]).await;
    endpoints_are_registered_listed_and_deleted(setup).await;
}

#[tokio::test]
async fn http_endpoints_need_allow_http() {
    let app = TestApp::spawn().await;
    let (status, body) = register(
        &app,
        json!({"url": "http://127.0.0.1:9/", "events": ["payout.paid"]}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_url"))
    );
}

/// The README's Python snippet for checking `Lastclick-Signature`, as
/// written there.
fn readme_snippet() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("<!-- verify-signature -->")
        .nth(1)
        .expect("the README marks its verification snippet");
    let code = after
        .split("```python")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    code.lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readmes_verification_snippet_accepts_a_signature_and_refuses_a_forgery() {
    let body = br#"{"id":"whe_1","type":"commission.created"}"#;
    let now = chrono::Utc::now().timestamp();
    let header = lastclick::webhooks::signature("whsec_test", now, body);
    let script = format!(
        "{}\nbody = {:?}.encode()\nprint(verify('whsec_test', {:?}, body), verify('whsec_other', {:?}, body), verify('whsec_test', {:?}, body + b' '))\n",
        readme_snippet(),
        std::str::from_utf8(body).unwrap(),
        header,
        header,
        header
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True False False"
    );
}
