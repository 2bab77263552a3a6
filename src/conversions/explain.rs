//! Why a visitor's click did not win its customer: the rules of
//! attribution (`worker/routing.rs`) told back, click by click, for the
//! attribution explanation (`GET /v1/customers/{id}/attribution`).

use serde::Serialize;

/// Why a click of the credited visitor was not the one credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReason {
    /// It came after the signup (beyond the clock skew): too late to count.
    AfterSignup,
    /// It came more than `attribution.window` before the signup.
    OutsideWindow,
    /// An earlier click: a later one took the visitor over (last click
    /// wins).
    EarlierClick,
    /// Its partner is disabled (or gone): its clicks credit nobody.
    DisabledPartner,
    /// A later click before the signup, but the signup named the credited
    /// one (by its cookie or click id, which the visitor's browser or the
    /// merchant's checkout kept).
    NotNamed,
}

/// What a losing click is judged against: the signup and the rules, all
/// times in unix ms.
#[derive(Debug, Clone, Copy)]
pub struct Judge {
    /// When the signup was applied; `None` while the worker has not.
    pub signed_up_ms: Option<i64>,
    pub window_ms: i64,
    pub clock_skew_ms: i64,
}

impl Judge {
    /// Why a click at `at_ms`, `later` than the credited one or not, of a
    /// partner `enabled` or not, lost. The first reason that applies is
    /// given, in the order the rules apply. (Which of two clicks is later
    /// is told by their ids, which carry their millisecond: click times are
    /// kept to the second.)
    pub fn reason(&self, at_ms: i64, later: bool, enabled: bool) -> LossReason {
        if let Some(signed_up) = self.signed_up_ms {
            if at_ms > signed_up + self.clock_skew_ms {
                return LossReason::AfterSignup;
            }
            if at_ms < signed_up - self.window_ms {
                return LossReason::OutsideWindow;
            }
        }
        if !later {
            LossReason::EarlierClick
        } else if !enabled {
            LossReason::DisabledPartner
        } else {
            LossReason::NotNamed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    #[test]
    fn each_click_gets_the_first_rule_that_made_it_lose() {
        let winner = 100 * MINUTE;
        let judge = Judge {
            signed_up_ms: Some(110 * MINUTE),
            window_ms: 60 * MINUTE,
            clock_skew_ms: 5 * MINUTE,
        };
        let cases = [
            (116 * MINUTE, true, LossReason::AfterSignup),
            (114 * MINUTE, true, LossReason::NotNamed),
            (114 * MINUTE, false, LossReason::DisabledPartner),
            (90 * MINUTE, false, LossReason::EarlierClick),
            (100 * MINUTE, true, LossReason::EarlierClick),
            (49 * MINUTE, true, LossReason::OutsideWindow),
        ];
        for (at, enabled, expected) in cases {
            let later = at > winner;
            assert_eq!(judge.reason(at, later, enabled), expected, "{at} {enabled}");
        }
        let unapplied = Judge {
            signed_up_ms: None,
            ..judge
        };
        assert_eq!(
            unapplied.reason(200 * MINUTE, true, true),
            LossReason::NotNamed
        );
    }
}
