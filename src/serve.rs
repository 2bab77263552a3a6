//! `lastclick serve`: wires store, route cache, click pipeline, redirect and
//! API together, serves the public and admin listeners, and shuts down
//! gracefully (stop accepting, finish in-flight requests, flush clicks).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, COOKIE, LOCATION, SET_COOKIE, USER_AGENT};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::admin::{self, AdminState};
use crate::api::{self, ApiState};
use crate::auth::{random_secret, RoleTokens};
use crate::cache::{run_refresher, RouteCache};
use crate::clicks::{self, FlushSettings};
use crate::config::Config;
use crate::cookie::CookieSigner;
use crate::metrics::Metrics;
use crate::redirect::{RedirectRequest, RedirectSettings, Redirector};
use crate::store::embedded::{spawn_expiry, EmbeddedStore};
use crate::store::redis::RedisStore;
use crate::store::Store;
use crate::worker::{LoopSettings, Worker};

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `Cookie` headers read from one request.
const MAX_COOKIE_HEADERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
}

/// Fills what embedded mode may leave unset with random values, logging
/// each: the service then runs on a bare machine with no configuration.
pub fn fill_embedded_defaults(config: &mut Config) {
    if !config.embedded() {
        return;
    }
    if config.cookie.secrets.is_empty() {
        tracing::warn!("cookie.secrets is empty: using a random secret; cookies will not verify after a restart");
        config.cookie.secrets.push(random_secret());
    }
    if config.auth.admin_token.is_empty() {
        config.auth.admin_token = random_secret();
        tracing::warn!(token = %config.auth.admin_token, "auth.admin_token is empty: generated an admin token for this run");
    }
    if config.auth.merchant_token.is_empty() {
        config.auth.merchant_token = random_secret();
        tracing::warn!(token = %config.auth.merchant_token, "auth.merchant_token is empty: generated a merchant token for this run");
    }
}

/// Runs the service on the two bound listeners until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    fill_embedded_defaults(&mut config);
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let store = open_store(&config).await?;

    let routes = Arc::new(RouteCache::new(
        config.landing_policy(),
        config.default_landing(),
    ));
    if let Err(e) = routes.refresh(store.as_ref()).await {
        // Visitors still land (on landing.default) while the store is down;
        // the refresher loads the routes as soon as it answers.
        metrics.count_store_error("load_catalog");
        tracing::error!(error = %e, "partners and campaigns could not be loaded; retrying in the background");
    }

    let (click_queue, click_receiver) =
        clicks::queue(config.clicks.buffer_capacity, Arc::clone(&metrics));
    let (stop_accepting, accepting) = watch::channel(false);
    let (stop_background, background) = watch::channel(false);
    let flusher = tokio::spawn(clicks::run_flusher(
        click_receiver,
        Arc::clone(&store),
        FlushSettings {
            batch_size: config.clicks.batch_size,
            interval: config.clicks.flush_interval,
        },
        Arc::clone(&metrics),
        background.clone(),
    ));
    tokio::spawn(run_refresher(
        Arc::clone(&routes),
        Arc::clone(&store),
        config.cache.refresh,
        Arc::clone(&metrics),
        background.clone(),
    ));
    // Embedded, nothing else can reach the event queue: the worker runs
    // here. With Redis, `lastclick worker` processes run it.
    let worker = config.embedded().then(|| {
        let worker = Worker::new(Arc::clone(&store), &config, Arc::clone(&metrics));
        tokio::spawn(worker.run(worker_settings(&config), background))
    });

    let redirector = Redirector::new(
        Arc::clone(&routes),
        CookieSigner::new(&config.cookie.secrets),
        click_queue.clone(),
        RedirectSettings {
            cookie_name: config.cookie.name.clone(),
            cookie_domain: config.cookie.domain.clone(),
            cookie_secure: config.cookie.secure,
            window_secs: config.attribution.window.as_secs(),
            dedup_secs: config.clicks.dedup_window.as_secs() as i64,
            default_location: config.default_landing().as_str().to_owned(),
        },
    );
    let api = api::router(ApiState {
        store: Arc::clone(&store),
        routes,
        roles: RoleTokens::new(&config.auth.admin_token, &config.auth.merchant_token),
        config: Arc::clone(&config),
        metrics: Arc::clone(&metrics),
    });
    let public_service = PublicService(Arc::new(PublicInner {
        redirector,
        metrics: Arc::clone(&metrics),
        api,
    }));
    let admin_service = TowerToHyperService::new(admin::router(AdminState {
        metrics,
        store,
        clicks: Some(click_queue),
    }));

    let max_head = config.listen.max_header_bytes;
    let public_loop = tokio::spawn(accept_loop(
        public,
        public_service,
        max_head,
        accepting.clone(),
    ));
    let admin_loop = tokio::spawn(accept_loop(admin, admin_service, max_head, accepting));

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_accepting.send(true);
    for accept in [public_loop, admin_loop] {
        if let Ok(connections) = accept.await {
            if tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("in-flight requests did not finish in time");
            }
        }
    }
    let _ = stop_background.send(true);
    let _ = flusher.await;
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    Ok(())
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

/// Runs `lastclick worker` until `shutdown` resolves: applies events from
/// the shared Redis queue. Finishes the event in hand, acknowledges nothing
/// it did not finish.
pub async fn run_worker(
    config: Config,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if config.embedded() {
        return Err(ServeError::Config(
            "`redis.url`: the worker needs Redis; in embedded mode `serve` runs the worker itself"
                .into(),
        ));
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let store = open_store(&config).await?;
    let (stop, stopped) = watch::channel(false);
    let admin_service = TowerToHyperService::new(admin::router(AdminState {
        metrics: Arc::clone(&metrics),
        store: Arc::clone(&store),
        clicks: None,
    }));
    let admin_loop = tokio::spawn(accept_loop(
        admin,
        admin_service,
        config.listen.max_header_bytes,
        stopped.clone(),
    ));
    let worker = Worker::new(store, &config, metrics);
    let running = tokio::spawn(worker.run(worker_settings(&config), stopped));
    shutdown.await;
    tracing::info!("worker stopping");
    let _ = stop.send(true);
    let _ = running.await;
    if let Ok(connections) = admin_loop.await {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown()).await;
    }
    Ok(())
}

/// The embedded store when `redis.url` is empty, else Redis.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    if config.embedded() {
        let embedded = Arc::new(EmbeddedStore::new(config.attribution.window));
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
    Ok(Arc::new(store))
}

/// Accepts connections until told to stop; returns the live connections so
/// the caller can wait for them to finish.
async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    max_header_bytes: usize,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
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
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(max_header_bytes)
            .serve_connection(TokioIo::new(stream), service.clone());
        let watched = connections.watch(connection);
        tokio::spawn(async move {
            let _ = watched.await;
        });
    }
    connections
}

/// The public listener: redirects answered directly, everything else by
/// the API router.
#[derive(Clone)]
struct PublicService(Arc<PublicInner>);

struct PublicInner {
    redirector: Redirector,
    metrics: Arc<Metrics>,
    api: Router,
}

impl hyper::service::Service<Request<Incoming>> for PublicService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with("/r/") || path == "/r" {
            let response = self.0.redirect(&req);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let api = self.0.api.clone();
        Box::pin(async move { api.oneshot(req.map(Body::new)).await })
    }
}

impl PublicInner {
    fn redirect(&self, req: &Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let head = req.method() == Method::HEAD;
        if !head && req.method() != Method::GET {
            return method_not_allowed();
        }
        let mut cookies: [&[u8]; MAX_COOKIE_HEADERS] = [&[]; MAX_COOKIE_HEADERS];
        let mut n = 0;
        for value in req
            .headers()
            .get_all(COOKIE)
            .iter()
            .take(MAX_COOKIE_HEADERS)
        {
            cookies[n] = value.as_bytes();
            n += 1;
        }
        let answer = self.redirector.handle(&RedirectRequest {
            head,
            path: req.uri().path(),
            query: req.uri().query(),
            cookies: &cookies[..n],
            user_agent: req.headers().get(USER_AGENT).map(HeaderValue::as_bytes),
            now: unix_now(),
        });
        self.metrics.count_redirect(answer.outcome);
        let location = match answer.location {
            std::borrow::Cow::Borrowed(fixed) => HeaderValue::from_static(fixed),
            // Built from validated URLs and percent-encoded values, so always
            // a valid header; should that ever break, land on the default.
            std::borrow::Cow::Owned(built) => HeaderValue::try_from(built)
                .unwrap_or_else(|_| HeaderValue::from_static(self.redirector.default_location())),
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.insert(LOCATION, location);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Explicit even for HEAD, where hyper would leave it out: clients
        // that cannot tell a HEAD answer then still know it has no body.
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        if let Some(cookie) = answer
            .set_cookie
            .and_then(|c| HeaderValue::try_from(c).ok())
        {
            headers.insert(SET_COOKIE, cookie);
        }
        self.metrics
            .redirect_seconds
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

fn method_not_allowed() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert("allow", HeaderValue::from_static("GET, HEAD"));
    response
}

/// The wall clock in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
