//! The `lastclick` binary: parses the subcommand and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lastclick::config::Config;
use lastclick::ids::{CampaignSlug, PartnerId};

// Small, short-lived allocations (request heads, header values) are most of
// what the redirect path allocates; mimalloc serves them faster than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lastclick",
    version,
    about = "Affiliate click-tracking edge service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve redirects, the /v1 API and the admin listener (embedded store
    /// unless redis.url is set).
    Serve {
        /// TOML configuration file; environment variables LASTCLICK_<SECTION>__<KEY> override it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Validate the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Apply conversion events from the shared Redis queue (run any number).
    Worker {
        /// TOML configuration file; environment variables LASTCLICK_<SECTION>__<KEY> override it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Validate the configuration (which must name Redis) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Queue conversion events from a JSON Lines file (one event per line),
    /// validated as POST /v1/events validates them, into Redis or the
    /// embedded store's database (a running serve applies them).
    Ingest {
        /// The JSON Lines file.
        file: PathBuf,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Copy the embedded store's database (embedded.path) to DEST while the
    /// service runs: a consistent copy as of one moment.
    Backup {
        /// Where the copy goes (replaced if it exists).
        dest: PathBuf,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Print an affiliate link built from the configuration.
    Link {
        /// Partner id.
        #[arg(long)]
        partner: String,
        /// Campaign slug; omitted for the partner's default link.
        #[arg(long)]
        campaign: Option<String>,
        /// The partner's own utm_term.
        #[arg(long)]
        term: Option<String>,
        /// Public base URL of the service (default: link.base_url).
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, check } => serve(config, check),
        Command::Worker { config, check } => worker(config, check),
        Command::Ingest { file, config } => ingest(file, config),
        Command::Backup { dest, config } => backup(dest, config),
        Command::Link {
            partner,
            campaign,
            term,
            base_url,
            config,
        } => link(partner, campaign, term, base_url, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lastclick: {message}");
            ExitCode::from(2)
        }
    }
}

/// The configuration, with logging started as its `[log]` says.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    lastclick::logs::init(&config.log);
    Ok(config)
}

fn serve(path: Option<PathBuf>, check: bool) -> Result<(), String> {
    let config = load_config(path.as_deref())?;
    if check {
        println!("configuration ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let public = tokio::net::TcpListener::bind(config.listen.http)
            .await
            .map_err(|e| format!("`listen.http` {}: {e}", config.listen.http))?;
        let admin = tokio::net::TcpListener::bind(config.listen.admin)
            .await
            .map_err(|e| format!("`listen.admin` {}: {e}", config.listen.admin))?;
        lastclick::serve::run(config, public, admin, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

fn worker(path: Option<PathBuf>, check: bool) -> Result<(), String> {
    let config = load_config(path.as_deref())?;
    if check {
        if config.embedded() {
            return Err(
                "`redis.url`: the worker needs Redis; in embedded mode `serve` runs the worker itself"
                    .into(),
            );
        }
        println!("configuration ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let admin = tokio::net::TcpListener::bind(config.worker.admin)
            .await
            .map_err(|e| format!("`worker.admin` {}: {e}", config.worker.admin))?;
        lastclick::serve::run_worker(config, admin, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

fn backup(dest: PathBuf, path: Option<PathBuf>) -> Result<(), String> {
    let config = load_config(path.as_deref())?;
    if !config.embedded() {
        return Err("`redis.url`: backup copies the embedded store; back Redis up with its own tools (an AOF or RDB copy)".into());
    }
    let source = &config.embedded.path;
    if !source.exists() {
        return Err(format!(
            "`embedded.path` {}: no database there",
            source.display()
        ));
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} pages {msg}")
            .expect("a valid template"),
    );
    lastclick::store::sqlite::backup(source, &dest, |done, all| {
        bar.set_length(all);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!("backed up {} to {}", source.display(), dest.display());
    Ok(())
}

fn ingest(file: PathBuf, path: Option<PathBuf>) -> Result<(), String> {
    let mut config = load_config(path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let summary = runtime.block_on(async {
        let store = lastclick::serve::open_store(&mut config, false)
            .await
            .map_err(|e| e.to_string())?;
        lastclick::conversions::ingest::ingest(store.as_ref(), &file, config.attribution.clock_skew)
            .await
            .map_err(|e| e.to_string())
    })?;
    println!(
        "accepted {}, duplicates {}, rejected {}",
        summary.accepted,
        summary.duplicates,
        summary.rejected.len()
    );
    for rejected in &summary.rejected {
        println!(
            "line {}: {}: {}",
            rejected.line, rejected.code, rejected.message
        );
    }
    if summary.rejected.is_empty() {
        Ok(())
    } else {
        Err(format!("{} lines rejected", summary.rejected.len()))
    }
}

/// Installs the SIGTERM and SIGINT handlers at once, before the service
/// announces itself (a signal sent right after that must stop it
/// gracefully, not kill it), and answers what resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let installed = "installing a signal handler only fails outside a runtime";
        let mut term = signal(SignalKind::terminate()).expect(installed);
        let mut interrupt = signal(SignalKind::interrupt()).expect(installed);
        async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = term.recv() => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn link(
    partner: String,
    campaign: Option<String>,
    term: Option<String>,
    base_url: Option<String>,
    path: Option<PathBuf>,
) -> Result<(), String> {
    let config = load_config(path.as_deref())?;
    let partner = PartnerId::parse(&partner).map_err(|e| format!("--partner: {e}"))?;
    let campaign = campaign
        .map(|c| CampaignSlug::parse(&c).map_err(|e| format!("--campaign: {e}")))
        .transpose()?;
    let base = base_url.unwrap_or(config.link.base_url);
    println!(
        "{}",
        lastclick::edge::link::affiliate_link(&base, &partner, campaign.as_ref(), term.as_deref())
    );
    Ok(())
}
