//! Money arithmetic: currencies and their minor units, amounts of money and
//! commission rounding, monthly values, ARR shares and tiers. Pure functions on `Decimal`; money
//! is never a float.

use chrono::{DateTime, Months, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Active ISO 4217 codes with their minor-unit digits, where not 2.
const ZERO_DIGITS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DIGITS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const FOUR_DIGITS: &[&str] = &["CLF", "UYW"];
const TWO_DIGITS: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT",
    "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC",
    "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN",
    "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// Digits after the decimal point of an ISO 4217 currency; `None` for a code
/// that is not one.
fn minor_digits(currency: &str) -> Option<u32> {
    // The common ones first: events are parsed at the API's rate.
    if matches!(currency, "USD" | "EUR" | "GBP") {
        return Some(2);
    }
    if currency.len() != 3 {
        return None;
    }
    if ZERO_DIGITS.contains(&currency) {
        Some(0)
    } else if THREE_DIGITS.contains(&currency) {
        Some(3)
    } else if FOUR_DIGITS.contains(&currency) {
        Some(4)
    } else if TWO_DIGITS.binary_search(&currency).is_ok() {
        Some(2)
    } else {
        None
    }
}

/// An ISO 4217 currency, parsed once where it comes in (an event, the
/// configuration, a payout request) and carrying its minor unit, so that
/// no later step meets a code it cannot round. Ordered, stored and shown
/// as its code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency {
    code: [u8; 3],
    minor_digits: u8,
}

/// A code that is not an active ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 4217 currency code")]
pub struct UnknownCurrency(pub String);

impl Currency {
    pub const USD: Currency = Currency {
        code: *b"USD",
        minor_digits: 2,
    };

    /// The currency named `code` (upper case, as ISO 4217 writes it).
    pub fn parse(code: &str) -> Result<Currency, UnknownCurrency> {
        let unknown = || UnknownCurrency(code.chars().take(16).collect());
        let digits = minor_digits(code).ok_or_else(unknown)?;
        let code = code.as_bytes().try_into().map_err(|_| unknown())?;
        Ok(Currency {
            code,
            minor_digits: digits as u8,
        })
    }

    pub fn code(&self) -> &str {
        // Only codes found in the tables above are built: ASCII letters.
        std::str::from_utf8(&self.code).expect("currency codes are ASCII")
    }

    /// Digits after the decimal point of the minor unit (2 for cents).
    pub fn minor_digits(self) -> u32 {
        u32::from(self.minor_digits)
    }

    /// `amount` rounded to the minor unit, half away from zero.
    pub fn round(self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_digits(), RoundingStrategy::MidpointAwayFromZero)
    }

    /// `amount` written with every digit of the minor unit: "0.00", not "0".
    pub fn shown(self, mut amount: Decimal) -> Decimal {
        amount.rescale(self.minor_digits());
        amount
    }
}

impl std::str::FromStr for Currency {
    type Err = UnknownCurrency;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Currency::parse(code)
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::fmt::Debug for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }
            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::parse(code).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Code)
    }
}

/// An amount of one currency. Never a float: `Decimal`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Decimal, currency: Currency) -> Money {
        Money { amount, currency }
    }

    /// `rate` of this amount (a commission on it), rounded to the minor
    /// unit, half away from zero.
    pub fn share(self, rate: Decimal) -> Money {
        self.with(self.currency.round(self.amount * rate))
    }

    /// Another amount of the same currency.
    pub fn with(self, amount: Decimal) -> Money {
        Money::new(amount, self.currency)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Month,
    Year,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Billing {
    /// The vendor bills the customer; the partner earns commission.
    Referral,
    /// The partner resells at a discount; no commission.
    Reseller,
}

/// What a subscription adds to its partner's ARR: 12 × the monthly value of
/// the payment, in full for a reseller customer, less the locked commission
/// rate for a referral customer. Not rounded: ARR is a measure, not a sum
/// that is paid.
pub fn arr_share(amount: Decimal, period: Period, billing: Billing, rate: Decimal) -> Decimal {
    let yearly = match period {
        Period::Month => amount * Decimal::from(12),
        Period::Year => amount,
    };
    match billing {
        Billing::Reseller => yearly,
        Billing::Referral => yearly * (Decimal::ONE - rate),
    }
}

/// A commission tier of the program (`[[tiers]]` in the configuration).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub name: String,
    /// ARR from which the tier applies.
    pub min_arr: Decimal,
    /// Commission share, a fraction such as 0.20.
    pub rate: Decimal,
    /// Whether the tier also needs a new customer in the last 12 months.
    pub needs_recent_customer: bool,
}

/// The highest tier `arr` reaches; a tier that needs a recent customer also
/// needs `recent_customer`. `tiers` is ordered lowest first and validated
/// to start at 0.
pub fn tier_for(tiers: &[Tier], arr: Decimal, recent_customer: bool) -> &Tier {
    tiers
        .iter()
        .rev()
        .find(|t| arr >= t.min_arr && (!t.needs_recent_customer || recent_customer))
        .unwrap_or(&tiers[0])
}

/// The tier after `current`, if any.
pub fn next_tier<'t>(tiers: &'t [Tier], current: &Tier) -> Option<&'t Tier> {
    let at = tiers.iter().position(|t| t.name == current.name)?;
    tiers.get(at + 1)
}

/// How many of `signups` (unix milliseconds) fall in the `months`
/// calendar months up to `now`.
pub fn signups_within(signups: &[i64], now: DateTime<Utc>, months: u32) -> usize {
    let until = now.timestamp_millis();
    let since = months_before(until, months);
    signups
        .iter()
        .filter(|&&at| at > since && at <= until)
        .count()
}

/// The moment `months` calendar months before `at` (unix milliseconds):
/// a signup counts as within those months when it is later than this.
pub fn months_before(at: i64, months: u32) -> i64 {
    DateTime::from_timestamp_millis(at)
        .and_then(|t| t.checked_sub_months(Months::new(months)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .timestamp_millis()
}

/// Free license months earned by new customers in the last 3 months.
pub fn free_license_months(new_in_3_months: usize) -> u32 {
    match new_in_3_months {
        0..=1 => 0,
        2..=3 => 3,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn tiers() -> Vec<Tier> {
        let tier = |name: &str, min: &str, rate: &str, recent| Tier {
            name: name.into(),
            min_arr: d(min),
            rate: d(rate),
            needs_recent_customer: recent,
        };
        vec![
            tier("bronze", "0", "0.20", false),
            tier("silver", "5000", "0.22", false),
            tier("gold", "20000", "0.25", true),
        ]
    }

    #[test]
    fn currencies_know_their_minor_units() {
        let digits = |code: &str| Currency::parse(code).ok().map(Currency::minor_digits);
        assert_eq!(digits("USD"), Some(2));
        assert_eq!(digits("JPY"), Some(0));
        assert_eq!(digits("usd"), None);
        assert_eq!(digits("USDT"), None);
        assert_eq!(digits("\u{e9}\u{e9}"), None);
        assert_eq!(minor_digits("USD"), Some(2));
        assert_eq!(minor_digits("JPY"), Some(0));
        assert_eq!(minor_digits("KWD"), Some(3));
        assert_eq!(minor_digits("CLF"), Some(4));
        assert_eq!(minor_digits("ABC"), None);
        assert_eq!(minor_digits("usd"), None);
        assert_eq!(minor_digits("USDT"), None);
    }

    #[test]
    fn commission_rounds_half_away_from_zero() {
        let share = |amount: &str, rate: &str, code: &str| {
            Money::new(d(amount), code.parse().unwrap())
                .share(d(rate))
                .amount
        };
        assert_eq!(share("0.125", "1", "USD"), d("0.13"));
        assert_eq!(share("-0.125", "1", "USD"), d("-0.13"));
        assert_eq!(share("10.01", "0.25", "USD"), d("2.50")); // 2.5025
        assert_eq!(share("10.02", "0.25", "USD"), d("2.51")); // 2.505
        assert_eq!(share("999", "0.22", "JPY"), d("220")); // 219.78
        assert_eq!(share("1.005", "0.5", "KWD"), d("0.503")); // 0.5025
    }

    #[test]
    fn a_currency_is_stored_and_shown_as_its_code() {
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(serde_json::to_string(&jpy).unwrap(), "\"JPY\"");
        assert_eq!(serde_json::from_str::<Currency>("\"JPY\"").unwrap(), jpy);
        assert!(serde_json::from_str::<Currency>("\"XYZ\"").is_err());
        let stored = postcard::to_allocvec(&jpy).unwrap();
        assert_eq!(stored, postcard::to_allocvec("JPY").unwrap());
        assert_eq!(Currency::USD.shown(d("0")).to_string(), "0.00");
        assert!(Currency::USD < "XAF".parse().unwrap());
    }

    #[test]
    fn twelve_payments_of_1000_at_20_percent_earn_2400() {
        let payment = Money::new(d("1000"), Currency::USD);
        let total: Decimal = (0..12).map(|_| payment.share(d("0.20")).amount).sum();
        assert_eq!(total, d("2400"));
    }

    #[test]
    fn the_specs_arr_examples() {
        let reseller = arr_share(d("1000"), Period::Month, Billing::Reseller, d("0.20"));
        assert_eq!(reseller, d("12000"));
        let referral = arr_share(d("1000"), Period::Month, Billing::Referral, d("0.20"));
        assert_eq!(referral, d("9600"));
        let mixed: Decimal = (0..5)
            .map(|_| arr_share(d("250"), Period::Month, Billing::Reseller, d("0.20")))
            .chain(
                (0..15).map(|_| arr_share(d("250"), Period::Month, Billing::Referral, d("0.20"))),
            )
            .sum();
        assert_eq!(mixed, d("51000"));
        let yearly = arr_share(d("1200"), Period::Year, Billing::Reseller, d("0.20"));
        assert_eq!(yearly, d("1200"));
    }

    #[test]
    fn tiers_follow_arr_and_gold_needs_a_recent_customer() {
        let tiers = tiers();
        assert_eq!(tier_for(&tiers, d("0"), false).name, "bronze");
        assert_eq!(tier_for(&tiers, d("4999.99"), true).name, "bronze");
        assert_eq!(tier_for(&tiers, d("5000"), false).name, "silver");
        assert_eq!(tier_for(&tiers, d("20000"), false).name, "silver");
        assert_eq!(tier_for(&tiers, d("20000"), true).name, "gold");
        assert_eq!(next_tier(&tiers, &tiers[1]).unwrap().name, "gold");
        assert!(next_tier(&tiers, &tiers[2]).is_none());
    }

    #[test]
    fn the_two_digit_table_is_sorted_for_binary_search() {
        assert!(TWO_DIGITS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(minor_digits("CHF"), Some(2));
        assert_eq!(minor_digits("ZWL"), Some(2));
        assert_eq!(minor_digits("XXX"), None);
    }

    #[test]
    fn free_license_months_by_new_customers() {
        assert_eq!(free_license_months(1), 0);
        assert_eq!(free_license_months(2), 3);
        assert_eq!(free_license_months(3), 3);
        assert_eq!(free_license_months(4), 6);
    }

    #[test]
    fn signups_are_counted_in_calendar_months() {
        let now: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap().timestamp_millis();
        let signups = [
            at("2026-08-23T12:00:01Z"),
            at("2026-08-23T12:00:00Z"),
            at("2025-11-23T12:00:01Z"),
            at("2026-11-24T00:00:00Z"),
        ];
        assert_eq!(signups_within(&signups, now, 3), 1);
        assert_eq!(signups_within(&signups, now, 12), 3);
    }
}
