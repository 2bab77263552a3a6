//! A headless Chromium driven over WebDriver (Debian's `chromedriver`),
//! for tests that click through the web pages as a person would: find an
//! element, type into it, click it, read the page, save a screenshot, and
//! find the files it downloads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// How long a page gets to show what a test waits for. A bound on a
/// broken page, not a timing assertion: a working page is much faster.
const PATIENCE: Duration = Duration::from_secs(30);

/// One browser window, closed (with its driver) when dropped.
pub struct Browser {
    driver: Child,
    session: String,
    base: String,
    http: reqwest::Client,
    pub downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium window of `width` ×
    /// `height` pixels.
    pub async fn open(width: u32, height: u32) -> Browser {
        assert!(
            installed("chromedriver"),
            "chromedriver is not installed: scripts/test installs Debian's `chromium-driver` (apt-get, as root)"
        );
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-background-networking", "--disable-sync",
                         "--disable-component-update", "--hide-scrollbars",
                         format!("--user-data-dir={}", profile.path().display()),
                         format!("--window-size={width},{height}")],
                "prefs": {"download.default_directory": downloads.path().display().to_string(),
                          "download.prompt_for_download": false},
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("a session")
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        let mut browser = Browser {
            driver,
            session,
            base,
            http,
            downloads,
            _profile: profile,
        };
        browser.allow_downloads().await;
        browser
    }

    /// Headless Chromium saves downloads only when told where, over CDP.
    async fn allow_downloads(&mut self) {
        let path = self.downloads.path().display().to_string();
        self.command(
            "POST",
            "goog/cdp/execute",
            json!({"cmd": "Browser.setDownloadBehavior",
                   "params": {"behavior": "allow", "downloadPath": path}}),
        )
        .await;
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page
    /// and answers what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until `script` returns something truthy, and answers it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.eval(script, json!([])).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The WebDriver element `css` selects, once the page has it.
    async fn element(&self, css: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let answer: Value = self
                .http
                .post(url)
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(found) = answer["value"].as_object().and_then(|o| o.values().next()) {
                if let Some(id) = found.as_str() {
                    return id.to_owned();
                }
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` selects, as a mouse would.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("element/{id}/click"), json!({}))
            .await;
    }

    /// Types `text` into the field `css` selects, after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("element/{id}/clear"), json!({}))
            .await;
        self.command(
            "POST",
            &format!("element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Sets a date or month field, which typing cannot fill the same way
    /// in every locale, and tells the page it changed.
    pub async fn set_value(&self, css: &str, value: &str) {
        self.element(css).await;
        self.eval(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            json!([css, value]),
        )
        .await;
    }

    pub async fn text_of(&self, css: &str) -> String {
        self.element(css).await;
        let text = self
            .eval(
                "return document.querySelector(arguments[0]).textContent",
                json!([css]),
            )
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG of the window at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Saves a PNG of the whole page (as tall as its content) at `path`.
    pub async fn full_page_screenshot(&self, path: &Path, width: u32) {
        let height = self
            .eval("return document.documentElement.scrollHeight", json!([]))
            .await
            .as_u64()
            .unwrap_or(1200) as u32;
        self.command(
            "POST",
            "window/rect",
            json!({"width": width, "height": height.min(6000) + 100}),
        )
        .await;
        self.screenshot(path).await;
    }

    /// The first file downloaded whose name starts with `prefix`, once it
    /// is complete.
    pub async fn downloaded(&self, prefix: &str) -> PathBuf {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let done = std::fs::read_dir(self.downloads.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.starts_with(prefix) && !name.ends_with(".crdownload")
                });
            if let Some(path) = done {
                return path;
            }
            assert!(
                Instant::now() < deadline,
                "nothing named {prefix}… was downloaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chromium_binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium is not installed: scripts/test installs Debian's `chromium`")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which closes Chromium, before the driver goes.
        let addr = self.base.trim_start_matches("http://").to_owned();
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
