//! Conversion events: their types, and the validation every event passes
//! before it is queued, whether it comes from `POST /v1/events` or from
//! `lastclick ingest`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::conversions::money::{Billing, Currency, Money, Period};
use crate::ids::{CouponCode, CustomerId, EventId, MAX_EVENT_ID_LEN};

/// Most events in one request.
pub const MAX_BATCH: usize = 1000;
/// Largest amount accepted: far above any subscription, and small enough
/// that sums and ARR (x 12) of many customers stay exact in `Decimal`.
const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// A validated event, as queued for the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub customer: CustomerId,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventKind {
    Signup {
        billing: Billing,
        attribution: AttributionRef,
    },
    Payment {
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        currency: Currency,
        period: Period,
    },
    Refund {
        payment: EventId,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        currency: Currency,
    },
    Cancel,
}

impl EventKind {
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::Signup { .. } => EventType::Signup,
            EventKind::Payment { .. } => EventType::Payment,
            EventKind::Refund { .. } => EventType::Refund,
            EventKind::Cancel => EventType::Cancel,
        }
    }

    /// The event type as named on the wire and in metrics.
    pub fn name(&self) -> &'static str {
        self.event_type().name()
    }
}

/// The event types. Each is named and given its fields here, and built in
/// `validate_event`: every match on it is exhaustive, so a new type does
/// not compile until each of them handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Signup,
    Payment,
    Refund,
    Cancel,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Signup,
        EventType::Payment,
        EventType::Refund,
        EventType::Cancel,
    ];

    /// The type as named on the wire (`type`) and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Signup => "signup",
            EventType::Payment => "payment",
            EventType::Refund => "refund",
            EventType::Cancel => "cancel",
        }
    }

    /// The fields an event of this type has besides `id`, `type`,
    /// `customer` and `at`.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            EventType::Signup => &["billing", "attribution"],
            EventType::Payment => &["amount", "currency", "period"],
            EventType::Refund => &["payment", "amount", "currency"],
            EventType::Cancel => &[],
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// How a signup names its click (one of the three), its coupon code, or
/// both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionRef {
    Cookie(String),
    ClickId(String),
    VisitorId(String),
    /// A code the visitor typed at checkout.
    Coupon(CouponCode),
    /// A coupon and a click: the coupon wins when it is valid (it was typed
    /// at checkout, after any click).
    CouponAndClick {
        coupon: CouponCode,
        click: Box<AttributionRef>,
    },
}

/// Why one event of a batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// Validates a request body: one event or an array of up to
/// [`MAX_BATCH`]. Either every event is valid, or the errors of all invalid
/// ones are returned and nothing may be queued. An event dated after
/// `latest` (now plus `attribution.clock_skew`) is refused.
pub fn validate_batch(body: &Value, latest: DateTime<Utc>) -> Result<Vec<Event>, Vec<EventError>> {
    let items: Vec<&Value> = match body {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(vec![EventError {
            index: 0,
            code: "invalid_batch",
            message: format!("a batch holds 1 to {MAX_BATCH} events, not {}", items.len()),
        }]);
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match validate_event(item, latest) {
            Ok(event) => events.push(event),
            Err((code, message)) => errors.push(EventError {
                index,
                code,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

type Invalid = (&'static str, String);

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    (code, message.into())
}

/// Validates one event object; `latest` is the latest `at` accepted.
pub fn validate_event(value: &Value, latest: DateTime<Utc>) -> Result<Event, Invalid> {
    let object = value
        .as_object()
        .ok_or_else(|| invalid("invalid_event", "an event is a JSON object"))?;
    let kind_name = string_field(object, "type")?;
    let event_type = EventType::parse(kind_name).ok_or_else(|| {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
        invalid(
            "invalid_type",
            format!(
                "`type` is `{}`, not one of {}",
                kind_name.escape_debug(),
                names.join(", ")
            ),
        )
    })?;
    let allowed = event_type.fields();
    if let Some(unknown) = object.keys().find(|k| {
        !["id", "type", "customer", "at"].contains(&k.as_str()) && !allowed.contains(&k.as_str())
    }) {
        return Err(invalid(
            "unknown_field",
            format!(
                "`{}` is not a field of a {kind_name} event",
                unknown.escape_debug()
            ),
        ));
    }
    let id = id_field(object, "id", EventId::parse)?;
    let customer = id_field(object, "customer", CustomerId::parse)?;
    let at = at_field(object)?;
    if at > latest {
        return Err(invalid(
            "at_in_future",
            format!("`at` is {at:?}, later than now and the allowed clock skew: events are reported after they happen"),
        ));
    }
    let kind = match event_type {
        EventType::Signup => EventKind::Signup {
            billing: billing_field(object)?,
            attribution: attribution_field(object)?,
        },
        EventType::Payment => {
            let Money { amount, currency } = money_fields(object)?;
            EventKind::Payment {
                amount,
                currency,
                period: period_field(object)?,
            }
        }
        EventType::Refund => {
            let payment = id_field(object, "payment", EventId::parse)?;
            let Money { amount, currency } = money_fields(object)?;
            EventKind::Refund {
                payment,
                amount,
                currency,
            }
        }
        EventType::Cancel => EventKind::Cancel,
    };
    Ok(Event {
        id,
        customer,
        at,
        kind,
    })
}

fn string_field<'v>(object: &'v Map<String, Value>, name: &str) -> Result<&'v str, Invalid> {
    match object.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(invalid(
            "invalid_field",
            format!("`{name}` must be a string"),
        )),
        None => Err(invalid("missing_field", format!("`{name}` is required"))),
    }
}

/// Ids: 1 to 128 printable characters without spaces.
fn id_field<T>(
    object: &Map<String, Value>,
    name: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, Invalid> {
    parse(string_field(object, name)?).map_err(|_| {
        invalid(
            "invalid_id",
            format!("`{name}` must be 1 to {MAX_EVENT_ID_LEN} printable characters without spaces"),
        )
    })
}

fn at_field(object: &Map<String, Value>) -> Result<DateTime<Utc>, Invalid> {
    let text = string_field(object, "at")?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(
                "invalid_at",
                format!("`at` is `{}`, not an RFC 3339 time", text.escape_debug()),
            )
        })
}

fn billing_field(object: &Map<String, Value>) -> Result<Billing, Invalid> {
    match string_field(object, "billing")? {
        "referral" => Ok(Billing::Referral),
        "reseller" => Ok(Billing::Reseller),
        other => Err(invalid(
            "invalid_billing",
            format!(
                "`billing` is `{}`, not referral or reseller",
                other.escape_debug()
            ),
        )),
    }
}

fn period_field(object: &Map<String, Value>) -> Result<Period, Invalid> {
    match string_field(object, "period")? {
        "month" => Ok(Period::Month),
        "year" => Ok(Period::Year),
        other => Err(invalid(
            "invalid_period",
            format!("`period` is `{}`, not month or year", other.escape_debug()),
        )),
    }
}

fn attribution_field(object: &Map<String, Value>) -> Result<AttributionRef, Invalid> {
    let bad = || {
        invalid(
            "invalid_attribution",
            "`attribution` must be an object with at most one of cookie, click_id, visitor_id, \
             and optionally a coupon (strings), at least one of them",
        )
    };
    let attribution = object
        .get("attribution")
        .ok_or_else(|| invalid("missing_field", "`attribution` is required"))?
        .as_object()
        .ok_or_else(bad)?;
    let mut click = None;
    let mut coupon = None;
    for (kind, value) in attribution {
        let text = value
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or_else(bad)?;
        let named = match kind.as_str() {
            "cookie" => AttributionRef::Cookie(text.to_owned()),
            "click_id" => AttributionRef::ClickId(text.to_owned()),
            "visitor_id" => AttributionRef::VisitorId(text.to_owned()),
            "coupon" => {
                let code = CouponCode::of(text).map_err(|e| invalid("invalid_coupon", e))?;
                coupon = Some(code);
                continue;
            }
            _ => return Err(bad()),
        };
        if click.replace(named).is_some() {
            return Err(bad());
        }
    }
    match (coupon, click) {
        (Some(coupon), Some(click)) => Ok(AttributionRef::CouponAndClick {
            coupon,
            click: Box::new(click),
        }),
        (Some(coupon), None) => Ok(AttributionRef::Coupon(coupon)),
        (None, Some(click)) => Ok(click),
        (None, None) => Err(bad()),
    }
}

/// `amount` (a positive decimal string with at most the currency's minor
/// digits) and `currency` (an ISO 4217 code).
fn money_fields(object: &Map<String, Value>) -> Result<Money, Invalid> {
    let code = string_field(object, "currency")?;
    let currency = Currency::parse(code).map_err(|_| {
        invalid(
            "invalid_currency",
            format!(
                "`currency` is `{}`, not an ISO 4217 code",
                code.escape_debug()
            ),
        )
    })?;
    let digits = currency.minor_digits();
    let text = match object.get("amount") {
        Some(Value::String(text)) => text,
        Some(_) => {
            return Err(invalid(
                "invalid_amount",
                "`amount` must be a decimal string such as \"12.50\", never a number",
            ))
        }
        None => return Err(invalid("missing_field", "`amount` is required")),
    };
    let plain = !text.is_empty()
        && text.len() <= 32
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && !text.starts_with('.')
        && !text.ends_with('.');
    let amount: Option<Decimal> = plain.then(|| text.parse().ok()).flatten();
    let amount = amount.ok_or_else(|| {
        invalid(
            "invalid_amount",
            format!(
                "`amount` is `{}`, not a decimal string such as \"12.50\"",
                text.escape_debug()
            ),
        )
    })?;
    if amount.is_zero() {
        return Err(invalid("invalid_amount", "`amount` must be above zero"));
    }
    if amount > Decimal::from(MAX_AMOUNT) {
        return Err(invalid(
            "invalid_amount",
            format!("`amount` must be at most {MAX_AMOUNT}"),
        ));
    }
    if amount.scale() > digits {
        return Err(invalid(
            "invalid_amount",
            format!("`amount` has more than {digits} decimal places, the minor unit of {currency}"),
        ));
    }
    Ok(Money::new(amount, currency))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A `latest` no test event reaches.
    fn far() -> DateTime<Utc> {
        "2100-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn events_dated_past_the_clock_skew_are_refused() {
        let latest: DateTime<Utc> = "2026-11-22T10:05:00Z".parse().unwrap();
        let mut event = payment(json!("1.00"), "USD");
        assert!(validate_event(&event, latest).is_ok());
        event["at"] = json!("2026-11-22T10:05:00.001Z");
        assert_eq!(
            validate_event(&event, latest).unwrap_err().0,
            "at_in_future"
        );
    }

    fn payment(amount: Value, currency: &str) -> Value {
        json!({"id": "e1", "type": "payment", "customer": "c1", "at": "2026-11-22T10:00:00Z",
               "amount": amount, "currency": currency, "period": "month"})
    }

    fn code(value: Value) -> &'static str {
        validate_event(&value, far()).unwrap_err().0
    }

    #[test]
    fn a_signup_names_a_click_a_coupon_or_both() {
        let signup = |attribution: Value| {
            json!({"id": "s", "type": "signup", "customer": "c", "at": "2026-11-22T10:00:00Z",
                   "billing": "referral", "attribution": attribution})
        };
        let attribution = |value: Value| match validate_event(&signup(value), far()) {
            Ok(Event {
                kind: EventKind::Signup { attribution, .. },
                ..
            }) => attribution,
            other => panic!("{other:?}"),
        };
        let pod = CouponCode::parse("POD-26").unwrap();
        assert_eq!(
            attribution(json!({"coupon": "pod-26"})),
            AttributionRef::Coupon(pod.clone())
        );
        assert_eq!(
            attribution(json!({"coupon": "POD-26", "click_id": "x"})),
            AttributionRef::CouponAndClick {
                coupon: pod,
                click: Box::new(AttributionRef::ClickId("x".into())),
            }
        );
        for bad in [
            json!({}),
            json!({"cookie": "a", "click_id": "b"}),
            json!({"coupon": "POD-26", "cookie": "a", "visitor_id": "b"}),
            json!({"coupon": 7}),
        ] {
            assert_eq!(code(signup(bad.clone())), "invalid_attribution", "{bad}");
        }
        assert_eq!(code(signup(json!({"coupon": "no"}))), "invalid_coupon");
        // Queued as JSON and read back by the worker.
        let coupled = attribution(json!({"coupon": "POD-26", "cookie": "v"}));
        let text = serde_json::to_string(&coupled).unwrap();
        assert_eq!(
            serde_json::from_str::<AttributionRef>(&text).unwrap(),
            coupled
        );
    }

    #[test]
    fn the_specs_examples_validate() {
        let batch = json!([
            {"id": "evt_1", "type": "signup", "customer": "cus_9", "at": "2026-11-22T10:00:00Z",
             "billing": "referral", "attribution": {"click_id": "abc"}},
            {"id": "evt_2", "type": "payment", "customer": "cus_9", "at": "2026-11-22T10:00:00+01:00",
             "amount": "1000.00", "currency": "USD", "period": "month"},
            {"id": "evt_3", "type": "refund", "customer": "cus_9", "at": "2026-11-22T10:00:00Z",
             "payment": "evt_2", "amount": "1000.00", "currency": "USD"},
            {"id": "evt_4", "type": "cancel", "customer": "cus_9", "at": "2026-11-22T10:00:00Z"}
        ]);
        let events = validate_batch(&batch, far()).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[1].at.to_rfc3339(), "2026-11-22T09:00:00+00:00");
        let round_trip: Event =
            serde_json::from_str(&serde_json::to_string(&events[2]).unwrap()).unwrap();
        assert_eq!(round_trip, events[2]);
        // One of each type: the wire's `type` tag (serde) and `EventType`'s
        // names agree, and every name parses back to its type.
        let types: Vec<EventType> = events.iter().map(|e| e.kind.event_type()).collect();
        assert_eq!(types, EventType::ALL);
        for event in &events {
            let wire = serde_json::to_value(event).unwrap();
            assert_eq!(wire["type"], event.kind.name());
            assert_eq!(
                EventType::parse(event.kind.name()),
                Some(event.kind.event_type())
            );
        }
    }

    #[test]
    fn amounts_are_positive_decimal_strings_within_the_minor_unit() {
        assert!(validate_event(&payment(json!("12.50"), "USD"), far()).is_ok());
        assert!(validate_event(&payment(json!("1000"), "JPY"), far()).is_ok());
        assert!(validate_event(&payment(json!("1.125"), "KWD"), far()).is_ok());
        for bad in [
            json!(12.5),
            json!("12.505"),
            json!("-1.00"),
            json!("0"),
            json!("0.00"),
            json!("1e3"),
            json!(""),
            json!(" 1"),
            json!("1."),
            json!(".5"),
            json!("NaN"),
            json!("1.2.3"),
            json!("+1"),
            json!("99999999999999999999999999999999999"),
            json!("1000000000000000.01"),
            json!("79228162514264337593543950335"),
        ] {
            assert_eq!(code(payment(bad.clone(), "USD")), "invalid_amount", "{bad}");
        }
        assert_eq!(code(payment(json!("10.5"), "JPY")), "invalid_amount");
        assert_eq!(code(payment(json!("10"), "usd")), "invalid_currency");
        assert_eq!(code(payment(json!("10"), "XYZ")), "invalid_currency");
    }

    #[test]
    fn junk_gets_a_code_naming_what_is_wrong() {
        let base = || payment(json!("1.00"), "USD");
        let with = |key: &str, value: Value| {
            let mut v = base();
            v[key] = value;
            v
        };
        let without = |key: &str| {
            let mut v = base();
            v.as_object_mut().unwrap().remove(key);
            v
        };
        assert_eq!(code(json!("x")), "invalid_event");
        assert_eq!(code(with("type", json!("purchase"))), "invalid_type");
        assert_eq!(code(with("extra", json!(1))), "unknown_field");
        assert_eq!(code(with("billing", json!("referral"))), "unknown_field");
        assert_eq!(code(without("id")), "missing_field");
        assert_eq!(code(with("id", json!(7))), "invalid_field");
        assert_eq!(code(with("id", json!("a b"))), "invalid_id");
        assert_eq!(code(with("id", json!("x".repeat(129)))), "invalid_id");
        assert_eq!(code(with("at", json!("yesterday"))), "invalid_at");
        assert_eq!(code(with("at", json!("2026-11-22"))), "invalid_at");
        assert_eq!(code(with("period", json!("week"))), "invalid_period");
        let signup = |attribution: Value| {
            json!({"id": "e", "type": "signup", "customer": "c", "at": "2026-11-22T10:00:00Z",
                   "billing": "referral", "attribution": attribution})
        };
        assert_eq!(code(signup(json!({}))), "invalid_attribution");
        assert_eq!(
            code(signup(json!({"cookie": "a", "click_id": "b"}))),
            "invalid_attribution"
        );
        assert_eq!(code(signup(json!({"email": "a"}))), "invalid_attribution");
        assert_eq!(code(signup(json!({"cookie": 5}))), "invalid_attribution");
        assert_eq!(code(signup(json!("abc"))), "invalid_attribution");
    }

    #[test]
    fn a_batch_is_all_valid_or_lists_every_error() {
        let good = payment(json!("1.00"), "USD");
        let bad = payment(json!("1.001"), "USD");
        let errors = validate_batch(&json!([good, bad, good, bad]), far()).unwrap_err();
        let indexes: Vec<usize> = errors.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [1, 3]);
        assert_eq!(
            validate_batch(&json!([]), far()).unwrap_err()[0].code,
            "invalid_batch"
        );
        let too_many = Value::Array(vec![good; MAX_BATCH + 1]);
        assert_eq!(
            validate_batch(&too_many, far()).unwrap_err()[0].code,
            "invalid_batch"
        );
    }
}
