//! Prometheus metrics: one registry per process, labels bounded (no partner
//! or visitor ids), counters for the hot path resolved once at startup.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::conversions::money::Currency;
use crate::edge::fetch::SuspectReason;

/// Sub-millisecond buckets: a redirect is expected to take tens of µs.
const REDIRECT_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25,
];

/// What happened to a redirect; each is a `lastclick_redirects_total` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectOutcome {
    Counted = 0,
    Duplicate,
    Bot,
    Head,
    UnknownPartner,
    DisabledPartner,
    /// A path that is no affiliate link (bad characters, extra segments).
    Invalid,
    /// Loaded in a frame, as a subresource or prefetched, by the browser's
    /// own account (`suspect_redirects_total{reason}` says which).
    Suspect,
}

impl RedirectOutcome {
    pub const ALL: [RedirectOutcome; 8] = [
        RedirectOutcome::Counted,
        RedirectOutcome::Duplicate,
        RedirectOutcome::Bot,
        RedirectOutcome::Head,
        RedirectOutcome::UnknownPartner,
        RedirectOutcome::DisabledPartner,
        RedirectOutcome::Invalid,
        RedirectOutcome::Suspect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RedirectOutcome::Counted => "counted",
            RedirectOutcome::Duplicate => "duplicate",
            RedirectOutcome::Bot => "bot",
            RedirectOutcome::Head => "head",
            RedirectOutcome::UnknownPartner => "unknown_partner",
            RedirectOutcome::DisabledPartner => "disabled_partner",
            RedirectOutcome::Invalid => "invalid",
            RedirectOutcome::Suspect => "suspect",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Indexed by `RedirectOutcome as usize`, so counting a redirect hashes nothing.
    redirects: Vec<IntCounter>,
    /// Indexed by `SuspectReason as usize`.
    suspects: Vec<IntCounter>,
    pub redirect_seconds: Histogram,
    pub click_queue_depth: IntGauge,
    /// The instance's own state, for dashboards and alerts.
    pub service: ServiceGauges,
    pub clicks_dropped: IntCounter,
    /// Bot and suspect requests not tallied: too many cells between writes.
    pub traffic_dropped: IntCounter,
    pub clicks_written: IntCounter,
    /// The event queue, read from the store at scrape time.
    pub queue: QueueGauges,
    pub events_dead_lettered: IntCounter,
    pub late_batches: IntCounter,
    pub book_steps: IntCounter,
    store_errors: IntCounterVec,
    refused: IntCounterVec,
    events_received: IntCounterVec,
    events_processed: IntCounterVec,
    commissions: CounterVec,
    payouts: PayoutCounters,
    /// Requested payouts nobody has paid or failed yet, read from the
    /// store at scrape time.
    pub payouts_waiting: PayoutGauges,
    /// The currencies paid out (`payout.minimum`), set by `prime`.
    currencies: std::sync::OnceLock<Vec<Currency>>,
    pub webhooks: WebhookMetrics,
}

/// Webhook deliveries, as the delivering instance sees them.
pub struct WebhookMetrics {
    deliveries: IntCounterVec,
    /// Age of the oldest event some endpoint has not had yet.
    pub oldest_undelivered_seconds: IntGauge,
    /// Events an endpoint skipped, more than `webhooks.max_backlog` behind.
    pub skipped: IntCounter,
}

/// What became of one delivery attempt
/// (`webhook_deliveries_total{outcome}`).
pub const DELIVERY_OUTCOMES: [&str; 3] = ["succeeded", "retrying", "failed"];

impl WebhookMetrics {
    fn new(r: &Register) -> Self {
        let deliveries = r.labelled(
            "webhook_deliveries_total",
            "Webhook delivery attempts by outcome: succeeded, retrying (failed, to be retried), failed (given up).",
            &["outcome"],
        );
        for outcome in DELIVERY_OUTCOMES {
            deliveries.with_label_values(&[outcome]);
        }
        WebhookMetrics {
            deliveries,
            oldest_undelivered_seconds: r.add(IntGauge::new(
                "webhook_oldest_undelivered_seconds",
                "Age of the oldest webhook event not yet delivered (or given up) to every endpoint that subscribes to it; 0 when none waits.",
            )),
            skipped: r.add(IntCounter::new(
                "webhook_events_skipped_total",
                "Webhook events never sent to an endpoint because it fell more than webhooks.max_backlog events behind.",
            )),
        }
    }

    /// `outcome` is one of `DELIVERY_OUTCOMES`.
    pub fn count(&self, outcome: &str) {
        self.deliveries.with_label_values(&[outcome]).inc();
    }
}

/// The store operations every instance performs, whose error counters
/// start at zero.
const COMMON_STORE_OPERATIONS: [&str; 3] = ["record_clicks", "ping", "next_events"];
/// Why a limit refused a request (`requests_refused_total{reason}`).
const REFUSED_REASONS: [&str; 6] = [
    "overloaded",
    "connection_closed",
    "admin_connection_closed",
    "rate_limited",
    "reports_busy",
    "body_timeout",
];
/// What the worker makes of an event (`events_processed_total{outcome}`).
const PROCESSED_OUTCOMES: [&str; 4] = ["applied", "duplicate", "no_effect", "parked"];

/// The instance's own state.
pub struct ServiceGauges {
    /// `clicks.buffer_capacity`, so that alerts read the depth as a share.
    pub click_buffer_capacity: IntGauge,
    /// 1 while the store answers, as `/readyz` sees it at scrape time.
    pub ready: IntGauge,
}

impl ServiceGauges {
    fn new(r: &Register) -> Self {
        ServiceGauges {
            click_buffer_capacity: r.add(IntGauge::new(
                "click_buffer_capacity",
                "Clicks the in-memory buffer holds at most (clicks.buffer_capacity).",
            )),
            ready: r.add(IntGauge::new(
                "ready",
                "1 while the store answers (as /readyz sees it, checked at scrape time), else 0.",
            )),
        }
    }
}

/// Payouts that reached a status through this process.
struct PayoutCounters {
    count: IntCounterVec,
    amount: CounterVec,
}

impl PayoutCounters {
    fn new(r: &Register) -> Self {
        PayoutCounters {
            count: r.labelled(
                "payouts_total",
                "Payouts that reached a status (requested, paid, failed) through this process, by currency.",
                &["status", "currency"],
            ),
            amount: r.add(CounterVec::new(
                Opts::new(
                    "payout_amount_total",
                    "Amount of the payouts that reached a status through this process, by status and currency. For monitoring only: the ledger is the record.",
                ),
                &["status", "currency"],
            )),
        }
    }
}

/// The payout queue's gauges, by currency.
pub struct PayoutGauges {
    pub count: IntGaugeVec,
    pub amount: prometheus::GaugeVec,
    pub oldest_seconds: IntGauge,
}

impl PayoutGauges {
    fn new(r: &Register) -> Self {
        PayoutGauges {
            count: r.add(IntGaugeVec::new(
                Opts::new(
                    "payouts_waiting",
                    "Requested payouts not yet marked paid or failed, by currency (read at scrape time).",
                ),
                &["currency"],
            )),
            amount: r.add(prometheus::GaugeVec::new(
                Opts::new(
                    "payouts_waiting_amount",
                    "Amount of the requested payouts not yet marked paid or failed, by currency (read at scrape time).",
                ),
                &["currency"],
            )),
            oldest_seconds: r.add(IntGauge::new(
                "payouts_oldest_waiting_seconds",
                "Age of the oldest requested payout not yet marked paid or failed; 0 when none waits.",
            )),
        }
    }
}

/// The event queue's gauges.
pub struct QueueGauges {
    /// Queued, not yet taken by any worker.
    pub waiting: IntGauge,
    /// Taken by a worker, not yet acknowledged.
    pub pending: IntGauge,
    /// Routed to a partner, waiting in its inbox for the book step.
    pub routed: IntGauge,
    /// Parked until their customer's signup arrives.
    pub parked: IntGauge,
}

impl QueueGauges {
    fn new(r: &Register) -> Self {
        QueueGauges {
            waiting: r.add(IntGauge::new(
                "worker_lag_events",
                "Conversion events queued and not yet taken by any worker.",
            )),
            pending: r.add(IntGauge::new(
                "worker_pending_events",
                "Conversion events taken by a worker and not yet acknowledged.",
            )),
            routed: r.add(IntGauge::new(
                "worker_routed_events",
                "Conversion events routed to their partner, waiting in its inbox for the book step (read at scrape time).",
            )),
            parked: r.add(IntGauge::new(
                "events_parked",
                "Conversion events parked until their customer's signup arrives (read at scrape time).",
            )),
        }
    }
}

/// Makes each metric and registers it in one step.
struct Register(Registry);

impl Register {
    fn add<M>(&self, made: prometheus::Result<M>) -> M
    where
        M: prometheus::core::Collector + Clone + 'static,
    {
        let metric = made.expect("static metric definition");
        self.0
            .register(Box::new(metric.clone()))
            .expect("each metric is registered once");
        metric
    }

    /// `redirects_total{outcome}`, one counter per outcome, resolved once.
    fn redirect_counters(&self) -> Vec<IntCounter> {
        let by_outcome = self.add(IntCounterVec::new(
            Opts::new("redirects_total", "Redirects answered, by outcome."),
            &["outcome"],
        ));
        RedirectOutcome::ALL
            .iter()
            .map(|o| by_outcome.with_label_values(&[o.label()]))
            .collect()
    }

    /// `suspect_redirects_total{reason}`, one counter per reason.
    fn suspect_counters(&self) -> Vec<IntCounter> {
        let by_reason = self.add(IntCounterVec::new(
            Opts::new(
                "suspect_redirects_total",
                "Redirects the browser said were not a visitor's click (no cookie, not counted), by reason: iframe, subresource, prefetch.",
            ),
            &["reason"],
        ));
        SuspectReason::ALL
            .iter()
            .map(|r| by_reason.with_label_values(&[r.label()]))
            .collect()
    }

    /// An integer counter per value of `labels`.
    fn labelled(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// `build_info{version}`, always 1.
    fn build_info(&self) {
        self.add(IntGaugeVec::new(
            Opts::new("build_info", "Always 1; labels carry the build."),
            &["version"],
        ))
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Register(
            Registry::new_custom(Some("lastclick".into()), None)
                .expect("a constant prefix is valid"),
        );
        r.build_info();
        Metrics {
            redirects: r.redirect_counters(),
            suspects: r.suspect_counters(),
            redirect_seconds: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "redirect_duration_seconds",
                    "Time to answer a redirect, from request head to response.",
                )
                .buckets(REDIRECT_BUCKETS.to_vec()),
            )),
            click_queue_depth: r.add(IntGauge::new(
                "click_buffer_depth",
                "Clicks waiting in memory to be written to the store.",
            )),
            service: ServiceGauges::new(&r),
            clicks_dropped: r.add(IntCounter::new(
                "clicks_dropped_total",
                "Counted clicks dropped because the click buffer was full.",
            )),
            traffic_dropped: r.add(IntCounter::new(
                "traffic_dropped_total",
                "Bot and suspect requests not tallied for the report: more distinct cells than an instance tallies between two writes.",
            )),
            clicks_written: r.add(IntCounter::new(
                "clicks_written_total",
                "Counted clicks written to the store.",
            )),
            store_errors: r.labelled(
                "store_errors_total",
                "Failed store operations, by operation.",
                &["operation"],
            ),
            events_received: r.labelled(
                "events_received_total",
                "Conversion events accepted by the API, by type and outcome (queued or duplicate).",
                &["type", "outcome"],
            ),
            events_processed: r.labelled(
                "events_processed_total",
                "Conversion events the worker finished, by type and outcome.",
                &["type", "outcome"],
            ),
            commissions: r.add(CounterVec::new(
                Opts::new(
                    "commissions_total",
                    "Commission credited by the worker, by currency (before clawbacks). For monitoring only: the ledger is the record.",
                ),
                &["currency"],
            )),
            payouts: PayoutCounters::new(&r),
            payouts_waiting: PayoutGauges::new(&r),
            currencies: std::sync::OnceLock::new(),
            webhooks: WebhookMetrics::new(&r),
            book_steps: r.add(IntCounter::new(
                "worker_book_steps_total",
                "Book steps committed: each applies what waited in one partner's inbox in one atomic write.",
            )),
            late_batches: r.add(IntCounter::new(
                "worker_late_batches_total",
                "Book steps that applied an event earlier than one already applied, and so read the partner's history to recompute later rates.",
            )),
            queue: QueueGauges::new(&r),
            refused: r.labelled(
                "requests_refused_total",
                "Requests and connections refused by a limit, by reason (overloaded, connection_closed, admin_connection_closed, rate_limited, reports_busy, body_timeout).",
                &["reason"],
            ),
            events_dead_lettered: r.add(IntCounter::new(
                "events_dead_lettered_total",
                "Queue entries moved to the dead letter (GET /v1/events/unreadable): not events, or events whose routing met a corrupt record three times.",
            )),
            registry: r.0,
        }
    }

    /// Starts the series a dashboard or an alert reads at zero, so that
    /// they read 0, not nothing, before the first event: each event type's
    /// intake and outcomes, the common store operations' errors, and the
    /// commissions and payouts of each currency paid out.
    pub fn prime(&self, currencies: &[Currency]) {
        for kind in crate::conversions::events::EventType::ALL {
            for outcome in ["queued", "duplicate"] {
                self.events_received
                    .with_label_values(&[kind.name(), outcome]);
            }
            for outcome in PROCESSED_OUTCOMES {
                self.events_processed
                    .with_label_values(&[kind.name(), outcome]);
            }
        }
        for reason in REFUSED_REASONS {
            self.refused.with_label_values(&[reason]);
        }
        for operation in COMMON_STORE_OPERATIONS {
            self.store_errors.with_label_values(&[operation]);
        }
        for currency in currencies {
            self.commissions.with_label_values(&[currency.code()]);
            for status in crate::conversions::book::PayoutStatus::ALL {
                let labels = [status.as_str(), currency.code()];
                self.payouts.count.with_label_values(&labels);
                self.payouts.amount.with_label_values(&labels);
            }
        }
        let _ = self.currencies.set(currencies.to_vec());
    }

    /// The currencies paid out, as `prime` was given them.
    pub fn currencies(&self) -> &[Currency] {
        self.currencies.get().map_or(&[], Vec::as_slice)
    }

    pub fn count_suspect(&self, reason: SuspectReason) {
        self.suspects[reason as usize].inc();
    }

    pub fn count_redirect(&self, outcome: RedirectOutcome) {
        self.redirects[outcome as usize].inc();
    }

    pub fn count_store_error(&self, operation: &'static str) {
        self.store_errors.with_label_values(&[operation]).inc();
    }

    /// A request or connection refused by a limit (`reason` is one of a
    /// fixed few).
    pub fn count_refused(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn count_received(&self, kind: &str, outcome: &str, n: usize) {
        self.events_received
            .with_label_values(&[kind, outcome])
            .inc_by(n as u64);
    }

    pub fn count_event(&self, kind: &str, outcome: &str) {
        self.events_processed
            .with_label_values(&[kind, outcome])
            .inc();
    }

    pub fn count_commission(&self, currency: Currency, amount: f64) {
        self.commissions
            .with_label_values(&[currency.code()])
            .inc_by(amount.max(0.0));
    }

    /// A payout that just reached its status.
    pub fn count_payout(&self, payout: &crate::conversions::book::Payout) {
        let labels = [payout.status.as_str(), payout.currency.code()];
        self.payouts.count.with_label_values(&labels).inc();
        let amount = f64::try_from(payout.amount).unwrap_or(0.0);
        self.payouts
            .amount
            .with_label_values(&labels)
            .inc_by(amount);
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
