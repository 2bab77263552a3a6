//! `lastclick serve`: wires store, route cache, click pipeline, redirect and
//! API together, serves the public and admin listeners, and shuts down
//! gracefully (stop accepting, finish in-flight requests, flush clicks).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::api::auth::{random_secret, RoleTokens};
use crate::api::{self, ApiState, RateLimits};
use crate::config::Config;
use crate::conversions::worker::{LoopSettings, Worker};
use crate::edge::cache::{run_refresher, RouteCache};
use crate::edge::clicks::{self, FlushSettings};
use crate::edge::cookie::CookieSigner;
use crate::edge::redirect::{RedirectSettings, Redirector};
use crate::edge::traffic::{self, TrafficCounts};
use crate::edge::{self, PublicInner, PublicService};
use crate::metrics::Metrics;
use crate::store::prelude::*;
use crate::store::redis::RedisStore;
use crate::store::sqlite::{spawn_expiry, SqliteStore};
use crate::webhooks::delivery::{Deliverer, RetryPolicy, Sender};

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
}

/// Fills what embedded mode may leave unset with values generated at the
/// first start and kept in the database, so that cookies and tokens keep
/// working across restarts; a generated token is logged once, at the start
/// that makes it.
fn fill_embedded_defaults(config: &mut Config, store: &SqliteStore) -> Result<(), ServeError> {
    let kept = |name: &str| {
        store
            .setting_or_insert(name, random_secret)
            .map_err(|e| ServeError::Config(format!("`embedded.path`: {e}")))
    };
    if config.cookie.secrets.is_empty() {
        let (secret, made) = kept("cookie.secret")?;
        if made {
            tracing::warn!("cookie.secrets is empty: generated a secret, kept in the database");
        }
        config.cookie.secrets.push(secret);
    }
    if config.auth.admin_token.is_empty() {
        let (token, made) = kept("auth.admin_token")?;
        if made {
            tracing::warn!(token = %token, "auth.admin_token is empty: generated an admin token, kept in the database (shown once)");
        }
        config.auth.admin_token = token;
    }
    if config.auth.merchant_token.is_empty() {
        let (token, made) = kept("auth.merchant_token")?;
        if made {
            tracing::warn!(token = %token, "auth.merchant_token is empty: generated a merchant token, kept in the database (shown once)");
        }
        config.auth.merchant_token = token;
    }
    Ok(())
}

/// Runs the service on the two bound listeners until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store = open_store(&mut config, true).await?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let paid_out: Vec<_> = config.payout.minimum.keys().copied().collect();
    metrics.prime(&paid_out);
    announce(&public, &admin)?;

    let routes = load_routes(&config, store.as_ref(), &metrics).await;
    let (click_queue, click_receiver) =
        clicks::queue(config.clicks.buffer_capacity, Arc::clone(&metrics));
    let (stop_accepting, accepting) = watch::channel(false);
    let (stop_background, background) = watch::channel(false);
    let traffic = Arc::new(TrafficCounts::new(Arc::clone(&metrics)));
    let writers = spawn_click_writers(&config, &store, click_receiver, &traffic, &background);
    tokio::spawn(run_refresher(
        Arc::clone(&routes),
        Arc::clone(&store),
        config.cache.refresh,
        Arc::clone(&metrics),
        background.clone(),
    ));
    // Embedded, nothing else can reach the event queue: the worker runs
    // here. With Redis, `lastclick worker` processes run it.
    let sender = Arc::new(Sender::new(&config.webhooks).map_err(ServeError::Config)?);
    let worker = config.embedded().then(|| {
        let worker = Worker::new(Arc::clone(&store), &config, Arc::clone(&metrics));
        let deliverer = deliverer(&config, &store, &sender, &metrics);
        tokio::spawn(deliverer.run(background.clone()));
        tokio::spawn(worker.run(worker_settings(&config), background))
    });

    let public_service = public_service(
        &config,
        &store,
        routes,
        (&click_queue, traffic),
        &metrics,
        sender,
    );
    let open = OpenConnections::new(config.listen.max_connections, Arc::clone(&metrics));
    let admin_limits = AdminLimits::new(&config, &metrics);
    let admin_service = TowerToHyperService::new(admin::router(AdminState {
        metrics,
        store,
        clicks: Some(click_queue),
    }));

    let max_head = config.listen.max_header_bytes;
    let public_loop = tokio::spawn(public_loop(
        public,
        public_service,
        open,
        max_head,
        accepting.clone(),
    ));
    let admin_loop = tokio::spawn(admin_loop(admin, admin_service, admin_limits, accepting));

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_accepting.send(true);
    drain([public_loop, admin_loop]).await;
    // Connections are done: the flusher writes what they queued, the
    // worker finishes its step.
    let _ = stop_background.send(true);
    for writer in writers {
        let _ = writer.await;
    }
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepts the public listener's connections: counted against
/// `listen.max_connections` in the accept loop, in the order they come (a
/// flood is counted before any of it is served), then served.
async fn public_loop(
    listener: TcpListener,
    service: PublicService,
    open: OpenConnections,
    max_head: usize,
    accepting: watch::Receiver<bool>,
) -> GracefulShutdown {
    let stop = accepting.clone();
    accept_loop(listener, accepting, move |stream, watcher| {
        let admitted = open.admit();
        let service = service.clone();
        let stop = stop.clone();
        async move {
            let Some((load, _held)) = admitted else {
                return; // dropped: closed at once
            };
            edge::serve_connection(stream, service, watcher, stop, max_head, load).await;
        }
    })
    .await
}

/// Waits for the accept loops to stop, then up to `DRAIN_TIMEOUT` for
/// their connections' in-flight requests.
async fn drain(accepts: [tokio::task::JoinHandle<GracefulShutdown>; 2]) {
    for accept in accepts {
        if let Ok(connections) = accept.await {
            if tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("in-flight requests did not finish in time");
            }
        }
    }
}

/// The public listener's service: redirects, and the API for the rest.
/// The click flusher and the bot and suspect tallies' writer, which run
/// until `stop` fires and then write what is left.
fn spawn_click_writers(
    config: &Config,
    store: &Arc<dyn Store>,
    clicks: clicks::ClickReceiver,
    traffic: &Arc<TrafficCounts>,
    stop: &watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let flush = FlushSettings {
        batch_size: config.clicks.batch_size,
        interval: config.clicks.flush_interval,
    };
    let metrics = Arc::clone(&traffic.metrics);
    [
        tokio::spawn(clicks::run_flusher(
            clicks,
            Arc::clone(store),
            flush,
            metrics,
            stop.clone(),
        )),
        tokio::spawn(traffic::run_writer(
            Arc::clone(traffic),
            Arc::clone(store),
            config.clicks.flush_interval,
            stop.clone(),
        )),
    ]
}

fn public_service(
    config: &Arc<Config>,
    store: &Arc<dyn Store>,
    routes: Arc<RouteCache>,
    (click_queue, traffic): (&clicks::ClickQueue, Arc<TrafficCounts>),
    metrics: &Arc<Metrics>,
    webhook_sender: Arc<Sender>,
) -> PublicService {
    let redirector = redirector(config, Arc::clone(&routes), click_queue.clone(), traffic);
    let api = api::router(ApiState {
        store: Arc::clone(store),
        routes,
        roles: RoleTokens::new(&config.auth.admin_token, &config.auth.merchant_token),
        config: Arc::clone(config),
        metrics: Arc::clone(metrics),
        report_slots: Arc::new(tokio::sync::Semaphore::new(config.report.max_concurrent)),
        rate_limits: Arc::new(RateLimits::new(
            config.api.rate_limit,
            config.api.rate_burst,
        )),
        webhook_sender,
    });
    PublicService(Arc::new(PublicInner {
        redirector,
        metrics: Arc::clone(metrics),
        api,
        write_timeout: config.listen.write_timeout,
    }))
}

/// The route cache, loaded. Visitors still land (on `landing.default`)
/// while the store is down; the refresher loads the routes as soon as it
/// answers.
async fn load_routes(config: &Config, store: &dyn Store, metrics: &Metrics) -> Arc<RouteCache> {
    let routes = Arc::new(RouteCache::new(
        config.landing_policy(),
        config.default_landing(),
    ));
    if let Err(e) = routes.refresh(store).await {
        metrics.count_store_error("load_catalog");
        tracing::error!(error = %e, "partners and campaigns could not be loaded; retrying in the background");
    }
    routes
}

/// The redirect's handler, as the configuration sets it up.
fn redirector(
    config: &Config,
    routes: Arc<RouteCache>,
    queue: clicks::ClickQueue,
    traffic: Arc<TrafficCounts>,
) -> Redirector {
    Redirector::new(
        routes,
        CookieSigner::new(&config.cookie.secrets),
        queue,
        traffic,
        RedirectSettings {
            cookie_name: config.cookie.name.clone(),
            cookie_domain: config.cookie.domain.clone(),
            cookie_secure: config.cookie.secure,
            window_secs: config.attribution.window.as_secs(),
            dedup_secs: config.clicks.dedup_window.as_secs() as i64,
            default_location: config.default_landing().as_str().to_owned(),
            max_terms_per_day: config.report.max_terms_per_day,
        },
    )
}

/// This process's worker settings: its name in the consumer group is the
/// host and process id, unique among live workers.
pub fn worker_settings(config: &Config) -> LoopSettings {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    LoopSettings {
        consumer: format!("{}-{}", host.trim(), std::process::id()),
        reclaim_after: config.worker.reclaim_after,
    }
}

/// The webhook delivery task: wherever the worker runs (the lease lets
/// one instance deliver at a time).
fn deliverer(
    config: &Config,
    store: &Arc<dyn Store>,
    sender: &Arc<Sender>,
    metrics: &Arc<Metrics>,
) -> Deliverer {
    Deliverer::new(
        Arc::clone(store),
        Arc::clone(sender),
        Arc::clone(metrics),
        RetryPolicy::of(&config.webhooks),
        worker_settings(config).consumer,
    )
}

/// Runs `lastclick worker` until `shutdown` resolves: applies events from
/// the shared Redis queue. Finishes the event in hand, acknowledges nothing
/// it did not finish.
pub async fn run_worker(
    mut config: Config,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if config.embedded() {
        return Err(ServeError::Config(
            "`redis.url`: the worker needs Redis; in embedded mode `serve` runs the worker itself"
                .into(),
        ));
    }
    let store = open_store(&mut config, false).await?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let paid_out: Vec<_> = config.payout.minimum.keys().copied().collect();
    metrics.prime(&paid_out);
    // Once the store is open, as `serve` does.
    let admin_addr = admin
        .local_addr()
        .map_err(|e| ServeError::Config(e.to_string()))?;
    println!("lastclick worker admin=http://{admin_addr}");
    let (stop, stopped) = watch::channel(false);
    let admin_service = TowerToHyperService::new(admin::router(AdminState {
        metrics: Arc::clone(&metrics),
        store: Arc::clone(&store),
        clicks: None,
    }));
    let admin_loop = tokio::spawn(admin_loop(
        admin,
        admin_service,
        AdminLimits::new(&config, &metrics),
        stopped.clone(),
    ));
    let sender = Arc::new(Sender::new(&config.webhooks).map_err(ServeError::Config)?);
    let deliverer = deliverer(&config, &store, &sender, &metrics);
    let delivering = tokio::spawn(deliverer.run(stopped.clone()));
    let worker = Worker::new(store, &config, metrics);
    let running = tokio::spawn(worker.run(worker_settings(&config), stopped));
    shutdown.await;
    tracing::info!("worker stopping");
    let _ = stop.send(true);
    let _ = running.await;
    let _ = delivering.await;
    if let Ok(connections) = admin_loop.await {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown()).await;
    }
    Ok(())
}

/// One machine-readable line on stdout, once the store is open: scripts
/// and tests read the ports from it when they ask for port 0, and know the
/// service is ready.
fn announce(public: &TcpListener, admin: &TcpListener) -> Result<(), ServeError> {
    let address = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| ServeError::Config(e.to_string()))
    };
    let (public, admin) = (address(public)?, address(admin)?);
    println!("lastclick listening public=http://{public} admin=http://{admin}");
    tracing::info!(%public, %admin, version = env!("CARGO_PKG_VERSION"), "listening");
    Ok(())
}

/// The embedded store when `redis.url` is empty (filling the secrets and
/// tokens it keeps; `runs_worker` for `serve`, which takes over what a
/// previous `serve` left taken), else Redis.
pub async fn open_store(
    config: &mut Config,
    runs_worker: bool,
) -> Result<Arc<dyn Store>, ServeError> {
    if config.embedded() {
        let path = config.embedded.path.clone();
        let window = config.attribution.window;
        let embedded = tokio::task::spawn_blocking(move || SqliteStore::open(&path, window))
            .await
            .map_err(|e| ServeError::Config(e.to_string()))?
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let embedded = Arc::new(embedded);
        fill_embedded_defaults(config, &embedded)?;
        if runs_worker {
            embedded
                .take_over()
                .map_err(|e| ServeError::Config(format!("`embedded.path`: {e}")))?;
        }
        spawn_expiry(Arc::clone(&embedded));
        return Ok(embedded);
    }
    let store = RedisStore::connect(
        &config.redis.url,
        config.redis.cluster,
        config.attribution.window,
    )
    .await
    .map_err(|e| ServeError::Config(format!("`redis.url`: {e}")))?;
    for warning in store
        .check_settings()
        .await
        .map_err(|refusal| ServeError::Config(format!("`redis.url`: {refusal}")))?
    {
        tracing::warn!("{warning}");
    }
    Ok(Arc::new(store))
}

/// The admin listener: every connection served by hyper, its writes
/// bounded by `listen.write_timeout` as on the public listener, at most
/// `listen.max_admin_connections` of them open.
fn admin_loop(
    listener: TcpListener,
    service: TowerToHyperService<axum::Router>,
    limits: AdminLimits,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = GracefulShutdown> {
    let AdminLimits {
        max_head,
        write_timeout,
        open,
    } = limits;
    accept_loop(listener, stop, move |stream, watcher| {
        let admitted = open.admit_below_cap("admin_connection_closed");
        let service = service.clone();
        async move {
            let Some(_held) = admitted else {
                return; // dropped: closed at once
            };
            let io = TokioIo::new(edge::connections::Replay::watching(stream, write_timeout));
            let connection = edge::http1_builder(max_head).serve_connection(io, service);
            let _ = watcher.watch(connection).await;
        }
    })
}

/// What bounds an admin listener's connections.
struct AdminLimits {
    max_head: usize,
    write_timeout: Duration,
    open: OpenConnections,
}

impl AdminLimits {
    fn new(config: &Config, metrics: &Arc<Metrics>) -> Self {
        AdminLimits {
            max_head: config.listen.max_header_bytes,
            write_timeout: config.listen.write_timeout,
            open: OpenConnections::new(config.listen.max_admin_connections, Arc::clone(metrics)),
        }
    }
}

/// Accepts connections until told to stop, serving each with `serve`
/// (given the stream and a watcher for graceful shutdown); returns the live
/// connections so the caller can wait for them to finish.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    serve: F,
) -> GracefulShutdown
where
    F: Fn(TcpStream, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, connections.watcher()));
    }
    connections
}

/// A listener's open connections, against its cap.
#[derive(Clone)]
struct OpenConnections {
    open: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One open connection, counted until dropped.
struct Held(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl OpenConnections {
    fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        OpenConnections {
            open: Arc::default(),
            max,
            metrics,
        }
    }

    /// Counts a new connection under a hard cap: `None` (closed at once,
    /// counted as `refused`) past it. The admin listeners'.
    fn admit_below_cap(&self, refused: &'static str) -> Option<Held> {
        let (before, held) = self.count();
        if before >= self.max {
            self.metrics.count_refused(refused);
            return None;
        }
        Some(held)
    }

    /// Counts a new connection: served normally under the cap, redirects
    /// only past it, and not at all (`None`) past one and a half times it.
    fn admit(&self) -> Option<(edge::Load, Held)> {
        let (before, held) = self.count();
        if before >= self.max.saturating_add(self.max / 2) {
            self.metrics.count_refused("connection_closed");
            return None;
        }
        let load = if before >= self.max {
            edge::Load::Over
        } else {
            edge::Load::Normal
        };
        Some((load, held))
    }

    /// One more open connection (until `Held` drops), and how many were
    /// open before it.
    fn count(&self) -> (usize, Held) {
        let before = self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (before, Held(Arc::clone(&self.open)))
    }
}
