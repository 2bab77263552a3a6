//! Click-to-signup timing and the holds it leads to: how long after its
//! click each credited signup came, the histogram a partner's page shows,
//! and a customer's commissions kept pending (`fast_signup`) until the
//! program team releases or rejects them.
//!
//! Why: click injection fires a click seconds before a signup the partner
//! did not cause. A real visitor rarely signs up within seconds of landing,
//! so a signup that fast is credited (it may be genuine) but its money
//! waits for a person to look.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::conversions::customer::Referral;

/// The histogram's upper bounds, in seconds: under 10 s, 1 min, 10 min,
/// 1 h, 1 day, 7 days, 30 days; the last bucket takes the rest.
pub const BUCKET_BOUNDS_SECS: [i64; 7] = [10, 60, 600, 3_600, 86_400, 604_800, 2_592_000];

/// The histogram covers signups of the last this many days.
pub const HISTOGRAM_DAYS: i64 = 90;

/// Milliseconds from the click to the signup, never negative (a signup a
/// little before its click, within the clock skew, is 0). The click's time
/// is kept to the second, so the age reads up to a second long: a hold
/// errs towards paying.
pub fn click_age_ms(referral: &Referral, signed_up_ms: i64) -> i64 {
    signed_up_ms
        .saturating_sub(referral.click_at.saturating_mul(1000))
        .max(0)
}

/// Signups by click-to-signup delay, as `GET /v1/partners/{id}` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelayHistogram {
    pub under_10s: u64,
    pub under_1m: u64,
    pub under_10m: u64,
    pub under_1h: u64,
    pub under_1d: u64,
    pub under_7d: u64,
    pub under_30d: u64,
    pub more: u64,
}

impl DelayHistogram {
    /// The histogram of `delays` (signup ms, delay s) whose signup is in
    /// the [`HISTOGRAM_DAYS`] before `now`.
    pub fn of(delays: &[(i64, i64)], now: DateTime<Utc>) -> DelayHistogram {
        let now_ms = now.timestamp_millis();
        let since = now_ms - HISTOGRAM_DAYS * 86_400_000;
        let mut histogram = DelayHistogram::default();
        for (signed_up, delay) in delays {
            if (since..=now_ms).contains(signed_up) {
                *histogram.bucket(*delay) += 1;
            }
        }
        histogram
    }

    fn bucket(&mut self, delay_secs: i64) -> &mut u64 {
        let index = BUCKET_BOUNDS_SECS
            .iter()
            .position(|bound| delay_secs < *bound)
            .unwrap_or(BUCKET_BOUNDS_SECS.len());
        match index {
            0 => &mut self.under_10s,
            1 => &mut self.under_1m,
            2 => &mut self.under_10m,
            3 => &mut self.under_1h,
            4 => &mut self.under_1d,
            5 => &mut self.under_7d,
            6 => &mut self.under_30d,
            _ => &mut self.more,
        }
    }
}

/// Why a customer's commissions are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// Signed up sooner after the click than `attribution.min_click_age`.
    FastSignup,
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldStatus {
    /// Commissions pending until someone decides.
    Held,
    /// Released: the commissions follow the usual `commission.hold_days`.
    Released,
    /// Rejected: the commissions were taken back and the customer earns
    /// the partner nothing more.
    Rejected,
}

impl HoldStatus {
    pub const ALL: [HoldStatus; 3] = [HoldStatus::Held, HoldStatus::Released, HoldStatus::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Held => "held",
            HoldStatus::Released => "released",
            HoldStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<HoldStatus> {
        HoldStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A customer's hold, kept on its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: HoldReason,
    pub status: HoldStatus,
    /// Click to signup, ms.
    pub click_age_ms: i64,
    /// The time of the signup that made it, unix ms: where the listing of
    /// holds keeps it, even if an earlier signup comes later.
    pub held_at: i64,
    /// When it was released or rejected, unix ms.
    pub decided_at: Option<i64>,
}

impl Hold {
    /// The hold a signup at `signed_up_ms`, `click_age_ms` after its
    /// click, gets under `min_click_age_ms` (0: none ever).
    pub fn for_signup(click_age_ms: i64, min_click_age_ms: i64, signed_up_ms: i64) -> Option<Hold> {
        (min_click_age_ms > 0 && click_age_ms < min_click_age_ms).then_some(Hold {
            reason: HoldReason::FastSignup,
            status: HoldStatus::Held,
            click_age_ms,
            held_at: signed_up_ms,
            decided_at: None,
        })
    }
}

/// What the program team decides about a held customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldDecision {
    Release,
    Reject,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delay_falls_in_the_bucket_below_its_bound() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = now.timestamp_millis();
        let delays: Vec<(i64, i64)> = [
            0, 9, 10, 59, 60, 3_599, 86_399, 604_799, 2_591_999, 2_592_000,
        ]
        .into_iter()
        .map(|d| (at - 1_000, d))
        .chain([(at - 91 * 86_400_000, 1)]) // older than 90 days
        .collect();
        let histogram = DelayHistogram::of(&delays, now);
        let expected = DelayHistogram {
            under_10s: 2,
            under_1m: 2,
            under_10m: 1,
            under_1h: 1,
            under_1d: 1,
            under_7d: 1,
            under_30d: 1,
            more: 1,
        };
        assert_eq!(histogram, expected);
    }

    #[test]
    fn only_a_signup_younger_than_the_minimum_is_held() {
        assert_eq!(Hold::for_signup(2_000, 0, 1), None);
        assert_eq!(Hold::for_signup(5_000, 5_000, 1), None);
        let held = Hold::for_signup(4_999, 5_000, 1).unwrap();
        assert_eq!(
            (held.status, held.reason),
            (HoldStatus::Held, HoldReason::FastSignup)
        );
    }
}
