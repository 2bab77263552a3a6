//! Test harness: starts the real `lastclick` binary on loopback port 0 and
//! talks HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod browser;
pub mod redis_server;

pub const ADMIN: &str = "test-admin-token";
pub const MERCHANT: &str = "test-merchant-token";
pub const SECRET: &str = "test-secret-0123456789";

/// A running `lastclick serve`, killed when dropped.
pub struct TestApp {
    child: Child,
    pub public: String,
    pub admin: String,
    pub client: reqwest::Client,
    /// The embedded store's directory, when the test did not name one.
    _data: Option<tempfile::TempDir>,
}

/// The settings every test app starts from; `extra` overrides or adds.
pub fn base_env() -> Vec<(String, String)> {
    [
        ("LASTCLICK_LISTEN__HTTP", "127.0.0.1:0"),
        ("LASTCLICK_LISTEN__ADMIN", "127.0.0.1:0"),
        ("LASTCLICK_WORKER__ADMIN", "127.0.0.1:0"),
        ("LASTCLICK_AUTH__ADMIN_TOKEN", ADMIN),
        ("LASTCLICK_AUTH__MERCHANT_TOKEN", MERCHANT),
        ("LASTCLICK_COOKIE__SECRETS", SECRET),
        (
            "LASTCLICK_LANDING__DEFAULT",
            "https://www.example.com/start",
        ),
        (
            "LASTCLICK_LANDING__ALLOWED_HOSTS",
            "www.example.com,promo.example.com",
        ),
        ("LASTCLICK_CLICKS__FLUSH_INTERVAL", "10ms"),
        ("LASTCLICK_CACHE__REFRESH", "100ms"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The base environment with `extra` set on top.
pub fn env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = base_env();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// Starts `lastclick SUBCOMMAND` with the test environment and `extra`,
/// its stdout piped (it prints its addresses there).
fn start(subcommand: &str, extra: &[(&str, &str)]) -> Child {
    start_env(subcommand, env_with(extra))
}

/// Starts `lastclick SUBCOMMAND` with exactly the environment `env`.
fn start_env(subcommand: &str, env: Vec<(String, String)>) -> Child {
    Command::new(binary())
        .arg(subcommand)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the lastclick binary starts")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_lastclick")
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    /// Starts `serve`; without `LASTCLICK_EMBEDDED__PATH` in `extra`, its
    /// embedded database lives in a directory removed with the app.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> TestApp {
        let named = extra.iter().any(|(k, _)| *k == "LASTCLICK_EMBEDDED__PATH");
        let data = (!named).then(|| tempfile::tempdir().expect("a temporary directory"));
        let path = data
            .as_ref()
            .map(|d| d.path().join("lastclick.db").to_string_lossy().into_owned());
        let mut extra = extra.to_vec();
        if let Some(path) = &path {
            extra.push(("LASTCLICK_EMBEDDED__PATH", path.as_str()));
        }
        let mut app = Self::spawn_env(env_with(&extra)).await;
        app._data = data;
        app
    }

    /// Starts `serve` with exactly the environment `env`.
    pub async fn spawn_env(env: Vec<(String, String)>) -> TestApp {
        let mut child = start_env("serve", env);
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .expect("reader thread")
        .expect("reads the listening line");
        let public =
            field(&line, "public=").unwrap_or_else(|| panic!("no listening line: {line:?}"));
        let admin = field(&line, "admin=").expect("admin address");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        TestApp {
            child,
            public,
            admin,
            client,
            _data: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lastclick did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.expect("request")).await
    }

    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.send_raw_body(method, path, token, body.to_string())
            .await
    }

    pub async fn send_raw_body(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.expect("request")).await
    }

    /// A partner `id` with one referred customer whose payments (USD, in the
    /// past so that they are available) earn 20 % each.
    pub async fn partner_earning(&self, id: &str, payments: &[&str]) -> String {
        let token = self.create_partner(id).await;
        let click = self.click(&format!("/r/{id}"), None, None).await;
        let click_id = click.param("lc_click").unwrap();
        self.report_when(id, "", 1).await;
        let now = chrono::Utc::now().timestamp() - 60;
        let customer = format!("cus_{id}");
        let mut events = vec![json!({"id": format!("s_{id}"), "type": "signup",
            "customer": customer, "at": rfc3339(now), "billing": "referral",
            "attribution": {"click_id": click_id}})];
        for (i, amount) in payments.iter().enumerate() {
            events.push(json!({"id": format!("p_{id}_{i}"), "type": "payment",
                "customer": customer, "at": rfc3339(now + 1 + i as i64),
                "amount": amount, "currency": "USD", "period": "month"}));
        }
        let (status, body) = self
            .send_json("POST", "/v1/events", Some(MERCHANT), json!(events))
            .await;
        assert_eq!(status, 202, "{body}");
        token
    }

    /// The partner's USD balance once `field` reads `expected`.
    pub async fn usd_when(&self, partner: &str, field: &str, expected: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self
                .get(&format!("/v1/partners/{partner}/balance"), Some(ADMIN))
                .await;
            assert_eq!(status, 200, "{body}");
            let usd = body["balances"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["currency"] == "USD").cloned())
                .unwrap_or(Value::Null);
            if usd[field] == expected {
                return usd;
            }
            assert!(
                Instant::now() < deadline,
                "USD {field} never became {expected}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a partner as admin and returns its token.
    pub async fn create_partner(&self, id: &str) -> String {
        let (status, body) = self
            .send_json("POST", "/v1/partners", Some(ADMIN), json!({"id": id, "name": format!("Partner {id}"), "paypal_email": format!("{id}@example.org")}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn create_campaign(&self, partner: &str, body: Value) -> Value {
        let (status, answer) = self
            .send_json(
                "POST",
                &format!("/v1/partners/{partner}/campaigns"),
                Some(ADMIN),
                body,
            )
            .await;
        assert_eq!(status, 201, "{answer}");
        answer
    }

    /// GETs a redirect path with optional cookie and user agent.
    pub async fn click(
        &self,
        path: &str,
        cookie: Option<&str>,
        user_agent: Option<&str>,
    ) -> Redirect {
        let mut req = self.client.get(self.url(path));
        if let Some(cookie) = cookie {
            req = req.header("cookie", format!("lc_attr={cookie}"));
        }
        if let Some(ua) = user_agent {
            req = req.header("user-agent", ua);
        }
        Redirect::from(req.send().await.expect("redirect request"))
    }

    /// Waits until the report's total clicks reach `clicks` (clicks are
    /// written in the background) and returns the report.
    pub async fn report_when(&self, partner: &str, query: &str, clicks: u64) -> Value {
        let path = format!("/v1/partners/{partner}/report?{query}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, report) = self.get(&path, Some(ADMIN)).await;
            assert_eq!(status, 200, "{report}");
            if report["totals"]["clicks"].as_u64() == Some(clicks) || Instant::now() > deadline {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one metric line, e.g. `lastclick_redirects_total{outcome="bot"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no series {series} in metrics"))
    }

    /// Writes raw bytes to the public listener and returns the raw answer
    /// (empty when the server closed the connection).
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        raw_exchange(self.public.trim_start_matches("http://"), request)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running service: embedded, or on its own Redis with one worker.
pub struct Stack {
    pub app: TestApp,
    _worker: Option<WorkerProcess>,
    _redis: Option<redis_server::RedisServer>,
}

impl Stack {
    pub async fn embedded() -> Stack {
        Stack::embedded_with(&[]).await
    }

    pub async fn embedded_with(extra: &[(&str, &str)]) -> Stack {
        Stack {
            app: TestApp::spawn_with(extra).await,
            _worker: None,
            _redis: None,
        }
    }

    pub async fn redis() -> Stack {
        Stack::redis_with(&[]).await
    }

    /// Redis mode with `extra` settings for `serve` and the worker.
    pub async fn redis_with(extra: &[(&str, &str)]) -> Stack {
        let redis = redis_server::RedisServer::start();
        let url = redis.url();
        let mut env = vec![("LASTCLICK_REDIS__URL", url.as_str())];
        env.extend_from_slice(extra);
        Stack {
            app: TestApp::spawn_with(&env).await,
            _worker: Some(WorkerProcess::spawn(&env)),
            _redis: Some(redis),
        }
    }
}

/// A `lastclick worker` process, killed when dropped.
pub struct WorkerProcess {
    child: Child,
    /// The worker's admin listener, `http://…`.
    pub admin: String,
}

impl WorkerProcess {
    pub fn spawn(extra: &[(&str, &str)]) -> WorkerProcess {
        let mut child = start("worker", extra);
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("reads the worker's first line");
        let admin = field(&line, "admin=").unwrap_or_else(|| panic!("no admin line: {line:?}"));
        WorkerProcess { child, admin }
    }

    /// One series of the worker's `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("worker metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// SIGKILL: the worker stops wherever it is.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key))
        .map(str::to_owned)
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Runs a validator or tool the tests need; one that is not installed
/// fails the test, naming where `scripts/test` gets it.
pub fn run_tool(program: &str, args: &[&str], installed_from: &str) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("`{program}` cannot run ({e}): scripts/test installs it ({installed_from})")
        })
}

/// Fails the test with `what` and the tool's output unless it succeeded.
pub fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unix time as RFC 3339, the form events carry.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339()
}

pub fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // No half-close: hyper drops a connection whose client stopped
    // sending before it answers. Requests say `Connection: close` instead.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Parses an HTTP/1.1 answer's head (without the blank line) into status
/// and header lines, names in lower case.
pub fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// A redirect as the visitor's browser sees it.
#[derive(Debug)]
pub struct Redirect {
    pub status: u16,
    pub location: String,
    pub cache_control: String,
    /// The whole Set-Cookie header, if any.
    pub set_cookie: Option<String>,
}

impl Redirect {
    /// The cookie's value (between `lc_attr=` and the first `;`).
    pub fn cookie_value(&self) -> Option<String> {
        let header = self.set_cookie.as_ref()?;
        let value = header.strip_prefix("lc_attr=")?.split(';').next()?;
        Some(value.to_owned())
    }

    /// A query parameter of the Location.
    pub fn param(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&self.location).expect("Location is an absolute URL");
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl From<reqwest::Response> for Redirect {
    fn from(response: reqwest::Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_owned())
        };
        Redirect {
            status: response.status().as_u16(),
            location: header("location").unwrap_or_default(),
            cache_control: header("cache-control").unwrap_or_default(),
            set_cookie: header("set-cookie"),
        }
    }
}
