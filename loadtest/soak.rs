//! The soak behind `loadtest/soak`: clicks and money through crashes, on
//! loopback, bounded in requests and time, exiting non-zero if anything
//! accepted was lost or counted twice.
//!
//!   cargo run --release --example soak -- BIN
//!
//! Settings come from the environment: `CLICKS` (1,000,000), `RATE` (clicks
//! a second, 20,000), `KILLS` (3), `DOWN_MS` (how long Redis stays down,
//! 1,000), `PARTNERS` (40), `CUSTOMERS` (per partner, 30), `PAYMENTS`
//! (per customer, 6).
//!
//! 1. **Clicks through Redis crashes.** One `serve` on a Redis with the
//!    append-only file on; `CLICKS` clicks from new visitors at `RATE`,
//!    while `redis-server` is SIGKILLed and restarted `KILLS` times. Then:
//!    counted (by `serve`), written, in the report, dropped (the bounded
//!    queue was full: counted by `serve`, by design) and lost (counted,
//!    not dropped, not in the report).
//! 2. **Money across instances and a killed worker.** Two `serve`s and two
//!    `worker`s on one Redis; a click per customer through either `serve`,
//!    then a steady stream of signups and payments (shuffled, a tenth of
//!    the batches sent twice) through either, with clicks flowing
//!    meanwhile; the first worker is SIGKILLed part-way. Each partner's
//!    balance must come to exactly 20 % of its customers' payments, once,
//!    and every click must be in the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "soak-admin-token";
const MERCHANT: &str = "soak-merchant-token";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
/// Requests written at once on a connection before reading the answers.
const PIPELINE: usize = 32;
const CONNECTIONS: usize = 16;
/// The longest wait for anything to settle; past it the soak fails.
const SETTLE: Duration = Duration::from_secs(180);

struct Settings {
    bin: PathBuf,
    work: PathBuf,
    clicks: u64,
    rate: u64,
    kills: u64,
    down: Duration,
    partners: usize,
    customers: usize,
    payments: usize,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{name} is not a number: {v}")))
        })
        .unwrap_or(default)
}

/// Stops everything the soak started, then exits with a message: the
/// servers must not outlive a soak that gave up.
fn fail(message: &str) -> ! {
    eprintln!("soak: {message}");
    for pid in CHILDREN.lock().unwrap().iter() {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    std::process::exit(1)
}

/// Every process the soak started, for `fail`.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn spawn(command: &mut Command, name: &str) -> Child {
    let child = command
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {name}: {e}")));
    CHILDREN.lock().unwrap().push(child.id());
    child
}

#[tokio::main]
async fn main() {
    std::panic::set_hook(Box::new(|info| fail(&info.to_string())));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bin, work] = &args[..] else {
        fail("usage: soak BIN WORK_DIR")
    };
    let settings = Settings {
        bin: bin.into(),
        work: work.into(),
        clicks: env_number("CLICKS", 1_000_000),
        rate: env_number("RATE", 20_000),
        kills: env_number("KILLS", 3),
        down: Duration::from_millis(env_number("DOWN_MS", 1_000)),
        partners: env_number("PARTNERS", 40) as usize,
        customers: env_number("CUSTOMERS", 30) as usize,
        payments: env_number("PAYMENTS", 6) as usize,
    };
    let clicks_ok = clicks_through_redis_crashes(&settings).await;
    let money_ok = money_across_instances(&settings).await;
    if !(clicks_ok && money_ok) {
        fail("FAILED: something accepted was lost or counted twice (above)");
    }
    println!("\nsoak: nothing lost, nothing counted twice");
}

// ---------------------------------------------------------------- phase 1

async fn clicks_through_redis_crashes(s: &Settings) -> bool {
    println!(
        "== phase 1: {} clicks at {}/s, Redis SIGKILLed {} times",
        s.clicks, s.rate, s.kills
    );
    let mut redis = Redis::start(&s.work.join("redis1"));
    let serve = Serve::start(s, "serve1", &redis);
    let api = Api::new(&serve.public);
    api.create_partners(s.partners).await;

    let sent = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn(flood(
        vec![serve.public.clone()],
        s.clicks,
        s.rate,
        s.partners,
        Arc::clone(&sent),
    ));
    for k in 1..=s.kills {
        let at = s.clicks * k / (s.kills + 1);
        while sent.load(Ordering::Relaxed) < at && !flood.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis.kill();
        let killed = Instant::now();
        tokio::time::sleep(s.down).await;
        redis.restart();
        println!(
            "   Redis SIGKILLed after {at} clicks sent; answering again {:.1} s later \
             (down {:?}, then loading its append-only file)",
            killed.elapsed().as_secs_f64(),
            s.down
        );
    }
    let answered = flood.await.expect("the flood finishes");
    let tally = settle_clicks(&[&serve]).await;
    let in_report = api.report_totals().await["clicks"].as_u64().unwrap_or(0);
    let ok = tally.print(s.clicks, answered, in_report);
    drop(serve);
    drop(redis);
    ok
}

/// What the `serve`s counted, wrote and dropped, once their queues are empty.
struct ClickTally {
    counted: u64,
    written: u64,
    dropped: u64,
}

impl ClickTally {
    /// Prints the figures; whether nothing was lost or counted twice.
    fn print(&self, sent: u64, answered: u64, in_report: u64) -> bool {
        let expected = self.counted - self.dropped.min(self.counted);
        let lost = expected as i64 - in_report as i64;
        println!("   sent {sent}, answered 302: {answered}");
        println!(
            "   counted {}, written {}, in the report {in_report}, dropped {}, lost {}",
            self.counted,
            self.written,
            self.dropped,
            lost.max(0)
        );
        if lost < 0 {
            println!("   FAILED: {} clicks counted twice", -lost);
        }
        if answered != sent {
            println!("   FAILED: {} clicks got no 302", sent - answered);
        }
        lost == 0 && answered == sent
    }
}

/// Waits until every `serve` has written or dropped every click it counted.
async fn settle_clicks(serves: &[&Serve]) -> ClickTally {
    let start = Instant::now();
    loop {
        let mut tally = ClickTally {
            counted: 0,
            written: 0,
            dropped: 0,
        };
        let mut depth = 0.0;
        for serve in serves {
            let m = metrics(&serve.admin).await;
            tally.counted += m.get("lastclick_redirects_total{outcome=\"counted\"}") as u64;
            tally.written += m.get("lastclick_clicks_written_total") as u64;
            tally.dropped += m.get("lastclick_clicks_dropped_total") as u64;
            depth += m.get("lastclick_click_buffer_depth");
        }
        let done = depth == 0.0 && tally.written + tally.dropped >= tally.counted;
        if done || start.elapsed() > SETTLE {
            return tally;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- phase 2

async fn money_across_instances(s: &Settings) -> bool {
    let customers = s.partners * s.customers;
    let events = customers * (1 + s.payments);
    println!(
        "\n== phase 2: two serves, two workers, {customers} customers, {events} events, one worker SIGKILLed"
    );
    let redis = Redis::start(&s.work.join("redis2"));
    let serves = [
        Serve::start(s, "serve2a", &redis),
        Serve::start(s, "serve2b", &redis),
    ];
    let mut workers = [
        Worker::start(s, "worker1", &redis),
        Worker::start(s, "worker2", &redis),
    ];
    let apis = [Api::new(&serves[0].public), Api::new(&serves[1].public)];
    apis[0].create_partners(s.partners).await;
    let clicks = click_ids(&serves, customers, s.partners).await;
    settle_clicks(&[&serves[0], &serves[1]]).await;

    // Clicks keep coming while the events are applied: a quarter of the
    // rate for about ten seconds, through both.
    let publics: Vec<String> = serves.iter().map(|s| s.public.clone()).collect();
    let background_clicks = s.rate / 4 * 10;
    let background = tokio::spawn(flood(
        publics,
        background_clicks,
        s.rate / 4,
        s.partners,
        Arc::new(AtomicU64::new(0)),
    ));
    let stream = event_stream(&clicks, s.payments);
    send_events(&apis, &stream, &mut workers[0]).await;
    let answered = background.await.expect("the background clicks finish");

    let expected = customers_per_partner(customers, s.partners, s.payments);
    let money_ok = settle_balances(&apis[0], &expected).await;
    let tally = settle_clicks(&[&serves[0], &serves[1]]).await;
    let totals = apis[0].report_totals().await;
    let in_report = totals["clicks"].as_u64().unwrap_or(0);
    let signups = totals["signups"].as_u64().unwrap_or(0);
    println!("   signups in the report: {signups} of {customers}");
    let sent = background_clicks + customers as u64;
    let clicks_ok = tally.print(sent, answered + customers as u64, in_report);
    money_ok && clicks_ok && signups == customers as u64
}

/// One click per customer, through either `serve`: the click ids, in
/// customer order (customer `c` clicked partner `c % partners`).
async fn click_ids(serves: &[Serve; 2], customers: usize, partners: usize) -> Vec<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut ids = Vec::with_capacity(customers);
    for c in 0..customers {
        let url = format!("{}/r/p{}", serves[c % 2].public, c % partners);
        let answer = client.get(url).header("user-agent", BROWSER).send().await;
        let answer = answer.unwrap_or_else(|e| fail(&format!("click {c}: {e}")));
        let location = answer.headers()["location"].to_str().unwrap().to_owned();
        let id = location
            .split(['?', '&'])
            .find_map(|pair| pair.strip_prefix("lc_click="))
            .unwrap_or_else(|| fail(&format!("click {c} was not counted: {location}")));
        ids.push(id.to_owned());
    }
    ids
}

/// Every customer's signup and payments (10.00 USD a month each), in a
/// shuffled order: some payments arrive before their signup and wait.
fn event_stream(clicks: &[String], payments: usize) -> Vec<Value> {
    let base = chrono::Utc::now() - chrono::Duration::seconds(60);
    let at = |ms: i64| (base + chrono::Duration::milliseconds(ms)).to_rfc3339();
    let mut events = Vec::new();
    for (c, click) in clicks.iter().enumerate() {
        let signed_up = c as i64;
        events.push(
            json!({"id": format!("s{c}"), "type": "signup", "customer": format!("c{c}"),
            "at": at(signed_up), "billing": "referral", "attribution": {"click_id": click}}),
        );
        for k in 0..payments {
            events.push(json!({"id": format!("p{c}_{k}"), "type": "payment",
                "customer": format!("c{c}"), "at": at(signed_up + 1_000 * (k as i64 + 1)),
                "amount": "10.00", "currency": "USD", "period": "month"}));
        }
    }
    events.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    events
}

/// Sends `stream` in batches of 50 alternately to each `serve`, a tenth of
/// the batches twice, at a steady pace; SIGKILLs `victim` at 40 %.
async fn send_events(apis: &[Api; 2], stream: &[Value], victim: &mut Worker) {
    let batches: Vec<&[Value]> = stream.chunks(50).collect();
    let kill_at = batches.len() * 2 / 5;
    for (i, batch) in batches.iter().enumerate() {
        if i == kill_at {
            victim.kill();
            println!(
                "   worker1 SIGKILLed after {i} of {} batches",
                batches.len()
            );
        }
        let api = &apis[i % 2];
        api.post_events(batch).await;
        if i % 10 == 3 {
            apis[(i + 1) % 2].post_events(batch).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each partner's expected commission: 20 % of its customers' payments.
fn customers_per_partner(customers: usize, partners: usize, payments: usize) -> Vec<String> {
    (0..partners)
        .map(|p| {
            let mine = (0..customers).filter(|c| c % partners == p).count();
            let cents = mine * payments * 200;
            format!("{}.{:02}", cents / 100, cents % 100)
        })
        .collect()
}

/// Waits until every partner's USD balance (pending plus available) is
/// the expected one; prints the partners that never get there.
async fn settle_balances(api: &Api, expected: &[String]) -> bool {
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (p, want) in expected.iter().enumerate() {
            let got = api.usd_commission(&format!("p{p}")).await;
            if &got != want {
                wrong.push(format!("p{p}: {got} (expected {want})"));
            }
        }
        if wrong.is_empty() {
            println!("   every partner's balance is exactly 20 % of its customers' payments");
            return true;
        }
        if start.elapsed() > SETTLE {
            println!("   FAILED: {} partners' balances are wrong:", wrong.len());
            for line in wrong.iter().take(10) {
                println!("     {line}");
            }
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------- traffic

/// Sends `total` clicks from new visitors (no cookie) to the `targets`
/// over `CONNECTIONS` keep-alive connections, `PIPELINE` at a time, at
/// `rate` a second; `sent` counts them as they go. Returns the 302s.
async fn flood(
    targets: Vec<String>,
    total: u64,
    rate: u64,
    partners: usize,
    sent: Arc<AtomicU64>,
) -> u64 {
    let start = Instant::now();
    let per_connection = total.div_ceil(CONNECTIONS as u64);
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let target = targets[i % targets.len()].clone();
        let share = per_connection.min(total.saturating_sub(per_connection * i as u64));
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let pace = Pace {
                start,
                rate,
                offset: i,
            };
            clicks_on_one_connection(&target, share, partners, pace, &sent).await
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.expect("a connection task ends");
    }
    answered
}

/// When a connection's batch is due: batches of all connections are spread
/// evenly over time at the overall rate.
struct Pace {
    start: Instant,
    rate: u64,
    offset: usize,
}

impl Pace {
    fn due(&self, batch: u64) -> Instant {
        let index = batch * CONNECTIONS as u64 + self.offset as u64;
        let secs = (index * PIPELINE as u64) as f64 / self.rate.max(1) as f64;
        self.start + Duration::from_secs_f64(secs)
    }
}

async fn clicks_on_one_connection(
    target: &str,
    total: u64,
    partners: usize,
    pace: Pace,
    sent: &AtomicU64,
) -> u64 {
    let addr = target.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("serve accepts");
    let mut answered = 0;
    let mut done = 0;
    let mut batch = 0;
    let mut request = Vec::new();
    while done < total {
        tokio::time::sleep_until(pace.due(batch).into()).await;
        let n = (total - done).min(PIPELINE as u64);
        request.clear();
        for k in 0..n {
            let i = done + k;
            let line = format!(
                "GET /r/p{}?utm_term=t{} HTTP/1.1\r\nHost: soak\r\nUser-Agent: {BROWSER}\r\n\r\n",
                (i as usize + pace.offset) % partners,
                i % 50
            );
            request.extend_from_slice(line.as_bytes());
        }
        stream.write_all(&request).await.expect("serve reads");
        answered += read_answers(&mut stream, n).await;
        done += n;
        sent.fetch_add(n, Ordering::Relaxed);
        batch += 1;
    }
    answered
}

/// Reads `n` answers (heads only: a 302 has no body); counts the 302s.
async fn read_answers(stream: &mut TcpStream, n: u64) -> u64 {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut heads = 0;
    let mut found = 0;
    let mut scanned = 0;
    while heads < n {
        let read = stream.read(&mut chunk).await.expect("serve answers");
        if read == 0 {
            fail("serve closed a connection mid-batch");
        }
        buf.extend_from_slice(&chunk[..read]);
        while let Some(end) = find(&buf[scanned..], b"\r\n\r\n") {
            if buf[scanned..].starts_with(b"HTTP/1.1 302 ") {
                found += 1;
            }
            scanned += end + 4;
            heads += 1;
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- the API

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Api {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Value {
        self.send_as(ADMIN, request).await
    }

    async fn send_as(&self, token: &str, request: reqwest::RequestBuilder) -> Value {
        let answer = request.bearer_auth(token).send().await;
        let answer = answer.unwrap_or_else(|e| fail(&format!("API: {e}")));
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            fail(&format!("API answered {status}: {body}"));
        }
        body
    }

    /// Creates partners `p0`.. and waits out a route cache refresh, so
    /// that every `serve` knows them.
    async fn create_partners(&self, n: usize) {
        for p in 0..n {
            let body = json!({"id": format!("p{p}"), "name": format!("Partner {p}")});
            let url = format!("{}/v1/partners", self.base);
            self.send(self.client.post(url).json(&body)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn post_events(&self, batch: &[Value]) {
        let url = format!("{}/v1/events", self.base);
        self.send_as(MERCHANT, self.client.post(url).json(&batch))
            .await;
    }

    /// The report's totals over yesterday and today (UTC).
    async fn report_totals(&self) -> Value {
        let today = chrono::Utc::now().date_naive();
        let from = today - chrono::Duration::days(1);
        let url = format!("{}/v1/report?from={from}&to={today}", self.base);
        self.send(self.client.get(url)).await["totals"].clone()
    }

    /// Pending plus available USD commission of `partner`, as shown.
    async fn usd_commission(&self, partner: &str) -> String {
        let url = format!("{}/v1/partners/{partner}/balance", self.base);
        let body = self.send(self.client.get(url)).await;
        let balances = body["balances"].as_array().cloned().unwrap_or_default();
        let usd = balances.iter().find(|b| b["currency"] == "USD");
        let cents = |field: &str| -> i64 {
            let text = usd.and_then(|b| b[field].as_str()).unwrap_or("0.00");
            let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
            whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
        };
        let total = cents("pending") + cents("available");
        format!("{}.{:02}", total / 100, total % 100)
    }
}

/// A `/metrics` scrape.
struct Scrape(String);

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

async fn metrics(admin: &str) -> Scrape {
    let body = reqwest::get(format!("{admin}/metrics")).await;
    let body = body.unwrap_or_else(|e| fail(&format!("metrics: {e}")));
    Scrape(body.text().await.unwrap_or_default())
}

// ---------------------------------------------------------------- processes

/// A `redis-server` on loopback with the append-only file on, as
/// production runs it; killed with the process that owns it.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let child = Self::spawn(dir, port);
        Redis {
            port,
            dir: dir.to_owned(),
            child,
        }
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(&mut command, "redis-server");
        wait_for_pong(port);
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to write anything more.
    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// On the same port and directory: it loads its append-only file.
    fn restart(&mut self) {
        self.child = Self::spawn(&self.dir, self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until Redis answers PING (not `-LOADING` while it reads its file).
fn wait_for_pong(port: u16) {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut reply = [0u8; 64];
            let answered = conn.write_all(b"PING\r\n").is_ok()
                && conn
                    .read(&mut reply)
                    .is_ok_and(|n| reply[..n].starts_with(b"+PONG"));
            if answered {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fail(&format!("redis-server on port {port} did not answer"));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The environment every lastclick process of the soak shares.
fn lastclick(s: &Settings, name: &str, redis: &Redis, subcommand: &str) -> Command {
    let mut command = Command::new(&s.bin);
    command
        .arg(subcommand)
        .env("LASTCLICK_REDIS__URL", redis.url())
        .env("LASTCLICK_AUTH__ADMIN_TOKEN", ADMIN)
        .env("LASTCLICK_AUTH__MERCHANT_TOKEN", MERCHANT)
        .env("LASTCLICK_COOKIE__SECRETS", "soak-secret-0123456789")
        .env("LASTCLICK_LISTEN__HTTP", "127.0.0.1:0")
        .env("LASTCLICK_LISTEN__ADMIN", "127.0.0.1:0")
        .env("LASTCLICK_WORKER__ADMIN", "127.0.0.1:0")
        .env("LASTCLICK_WORKER__RECLAIM_AFTER", "3s")
        .env("LASTCLICK_CACHE__REFRESH", "100ms")
        .env("LASTCLICK_API__RATE_LIMIT", "100000")
        .env("LASTCLICK_API__RATE_BURST", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log_file(s, name));
    command
}

fn log_file(s: &Settings, name: &str) -> Stdio {
    std::fs::File::create(s.work.join(format!("{name}.log")))
        .unwrap()
        .into()
}

/// Starts `command` and reads its first line, which names its addresses.
fn start_and_read_line(mut command: Command, name: &str) -> (Child, String) {
    use std::io::BufRead;
    let mut child = spawn(&mut command, name);
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).ok();
    if line.is_empty() {
        fail(&format!(
            "{name} did not start: see its log in the work directory"
        ));
    }
    (child, line)
}

fn address(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| fail(&format!("no {key} in {line:?}")))
        .to_owned()
}

struct Serve {
    public: String,
    admin: String,
    child: Child,
}

impl Serve {
    fn start(s: &Settings, name: &str, redis: &Redis) -> Serve {
        let (child, line) = start_and_read_line(lastclick(s, name, redis, "serve"), name);
        Serve {
            public: address(&line, "public="),
            admin: address(&line, "admin="),
            child,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

struct Worker {
    child: Child,
}

impl Worker {
    fn start(s: &Settings, name: &str, redis: &Redis) -> Worker {
        let (child, _line) = start_and_read_line(lastclick(s, name, redis, "worker"), name);
        Worker { child }
    }

    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
