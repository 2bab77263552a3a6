//! A constant-rate load generator for `loadtest/run`: sends the same request
//! mix as `mixed.lua` at a fixed rate over keep-alive connections, for a
//! bounded time, and prints the achieved rate and latency percentiles.
//!
//!   cargo run --release --example loadgen -- ADDR RATE SECONDS CONNECTIONS PARTNERS [COOKIE]
//!
//! Connection `i` of `n` sends request `k` at `start + (k * n + i) / rate`,
//! so the requests are spread evenly over time whatever the server does.
//! Latency is measured from the moment a request is sent to its answer's
//! last byte; a request sent more than 2 ms after its time is
//! counted as late, which shows whether the generator kept up.

use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";
const BOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

struct Settings {
    addr: String,
    rate: f64,
    duration: Duration,
    connections: usize,
    partners: u32,
    cookie: String,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    late: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: loadgen ADDR RATE SECONDS CONNECTIONS PARTNERS [COOKIE]");
        std::process::exit(2);
    }
    let number = |i: usize| -> f64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("loadgen: argument {} is not a number: {}", i + 1, args[i]);
            std::process::exit(2)
        })
    };
    let settings = Settings {
        addr: args[0].clone(),
        rate: number(1),
        duration: Duration::from_secs_f64(number(2)),
        connections: number(3) as usize,
        partners: number(4) as u32,
        cookie: args.get(5).cloned().unwrap_or_default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let tally = runtime.block_on(run(&settings));
    report(&settings, tally);
}

async fn run(settings: &Settings) -> Tally {
    let start = Instant::now() + Duration::from_millis(100);
    let interval = Duration::from_secs_f64(settings.connections as f64 / settings.rate);
    let mut tasks = Vec::new();
    for i in 0..settings.connections {
        let first = start + Duration::from_secs_f64(i as f64 / settings.rate);
        let end = start + settings.duration;
        let (addr, partners, cookie) = (
            settings.addr.clone(),
            settings.partners,
            settings.cookie.clone(),
        );
        tasks.push(tokio::spawn(async move {
            connection(&addr, first, interval, end, partners, &cookie).await
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let part = task.await.expect("a connection task");
        tally.latencies_us.extend(part.latencies_us);
        tally.errors += part.errors;
        tally.late += part.late;
    }
    tally
}

/// One keep-alive connection sending on its schedule until `end`.
async fn connection(
    addr: &str,
    first: Instant,
    interval: Duration,
    end: Instant,
    partners: u32,
    cookie: &str,
) -> Tally {
    let mut tally = Tally::default();
    let mut stream = None;
    let mut request = Vec::with_capacity(512);
    let mut answer = Vec::with_capacity(2048);
    let mut due = first;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        if sent.duration_since(due) > Duration::from_millis(2) {
            tally.late += 1;
        }
        if stream.is_none() {
            stream = TcpStream::connect(addr).await.ok();
            if let Some(s) = &stream {
                let _ = s.set_nodelay(true);
            }
        }
        let Some(s) = stream.as_mut() else {
            tally.errors += 1;
            due += interval;
            continue;
        };
        write_request(&mut request, partners, cookie);
        let ok = exchange(s, &request, &mut answer).await;
        if ok {
            let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
            tally.latencies_us.push(us);
        } else {
            tally.errors += 1;
            stream = None;
        }
        due += interval;
    }
    tally
}

/// The request mix of `mixed.lua`.
fn write_request(out: &mut Vec<u8>, partners: u32, cookie: &str) {
    let mut rng = rand::rng();
    let roll: u32 = rng.random_range(1..=100);
    let partner = rng.random_range(1..=partners);
    let method = if roll % 20 == 1 { "HEAD" } else { "GET" };
    out.clear();
    let path = if roll <= 60 {
        format!(
            "/r/p{partner}/c{}?utm_term=t{}",
            rng.random_range(1..=3),
            rng.random_range(1..=50)
        )
    } else {
        format!("/r/p{partner}?utm_source=newsletter")
    };
    let agent = if roll.is_multiple_of(10) {
        BOT
    } else {
        BROWSER
    };
    out.extend_from_slice(
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\n")
            .as_bytes(),
    );
    if roll.is_multiple_of(4) && !cookie.is_empty() {
        out.extend_from_slice(format!("Cookie: _ga=GA1.2.3.4; lc_attr={cookie}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends one request and reads its answer: a 302 with no body.
async fn exchange(stream: &mut TcpStream, request: &[u8], answer: &mut Vec<u8>) -> bool {
    if stream.write_all(request).await.is_err() {
        return false;
    }
    answer.clear();
    loop {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if answer.ends_with(b"\r\n\r\n") {
            return answer.starts_with(b"HTTP/1.1 302 ");
        }
    }
}

fn report(settings: &Settings, mut tally: Tally) {
    tally.latencies_us.sort_unstable();
    let n = tally.latencies_us.len();
    let percentile = |p: f64| -> u32 {
        if n == 0 {
            return 0;
        }
        tally.latencies_us[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    };
    println!(
        "requests={n} rps={:.0} p50_us={} p99_us={} errors={} late={} p999_us={} max_us={}",
        n as f64 / settings.duration.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        tally.errors,
        tally.late,
        percentile(0.999),
        tally.latencies_us.last().copied().unwrap_or(0)
    );
}
