//! The cap on distinct `utm_term`s a partner's clicks count under per UTC
//! day (`report.max_terms_per_day`).
//!
//! Links are public and every distinct term is its own report row: 300,000
//! clicks with made-up terms once made one partner's report 48.7 MB and
//! seconds to build. Past the cap, a click counts (and is attributed) under
//! the term [`OTHER_TERM`]; it is never dropped. The cap is kept in memory
//! by each instance, so with N instances (or after a restart the same day)
//! a partner may see up to N times the cap; still a bound, and what a
//! store round trip on the redirect would cost is not paid.

use std::hash::BuildHasher;
use std::sync::Arc;

use dashmap::DashMap;
use foldhash::fast::RandomState;
use foldhash::HashSet;

/// The term a click counts under once its partner has the day's
/// `max_terms_per_day` distinct terms.
pub const OTHER_TERM: &str = "(other)";

/// Each partner's distinct terms of the current UTC day, as hashes.
pub struct TermCap {
    max: usize,
    hasher: RandomState,
    partners: DashMap<Arc<str>, DayTerms, RandomState>,
}

struct DayTerms {
    day: i64,
    terms: HashSet<u64>,
}

impl TermCap {
    pub fn new(max_terms_per_day: usize) -> TermCap {
        TermCap {
            max: max_terms_per_day,
            hasher: RandomState::default(),
            partners: DashMap::with_hasher(RandomState::default()),
        }
    }

    /// The term a click of `partner` at `now` (unix seconds) counts under:
    /// `term` itself while the partner's day has room for it, else
    /// [`OTHER_TERM`].
    pub fn admit<'t>(&self, partner: &Arc<str>, term: &'t str, now: i64) -> &'t str {
        let day = now.div_euclid(86_400);
        let hash = self.hasher.hash_one(term);
        if let Some(known) = self.partners.get(partner) {
            // The common case, under a shared lock: a term seen today.
            if known.day == day && known.terms.contains(&hash) {
                return term;
            }
        }
        let mut entry = self
            .partners
            .entry(Arc::clone(partner))
            .or_insert_with(|| DayTerms {
                day,
                terms: HashSet::default(),
            });
        if entry.day != day {
            entry.day = day;
            entry.terms.clear();
        }
        if entry.terms.contains(&hash) || entry.terms.len() < self.max {
            entry.terms.insert(hash);
            term
        } else {
            OTHER_TERM
        }
    }

    /// The term a request that is not a click (a bot, a suspect) counts
    /// under: `term` when the partner's day already has it, else
    /// [`OTHER_TERM`]. It takes no room: only clicks admit terms.
    pub fn peek<'t>(&self, partner: &str, term: &'t str, now: i64) -> &'t str {
        let day = now.div_euclid(86_400);
        let known = self.partners.get(partner).is_some_and(|known| {
            known.day == day && known.terms.contains(&self.hasher.hash_one(term))
        });
        if known {
            term
        } else {
            OTHER_TERM
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_days_cap_new_terms_count_as_other_and_known_ones_still_count() {
        let cap = TermCap::new(2);
        let acme: Arc<str> = "acme".into();
        let rival: Arc<str> = "rival".into();
        let day = 1_795_000_000;
        assert_eq!(cap.admit(&acme, "a", day), "a");
        assert_eq!(cap.admit(&acme, "b", day), "b");
        assert_eq!(cap.admit(&acme, "c", day), OTHER_TERM);
        assert_eq!(cap.admit(&acme, "a", day + 60), "a", "a known term");
        assert_eq!(cap.admit(&rival, "c", day), "c", "per partner");
        assert_eq!(cap.admit(&acme, "c", day + 86_400), "c", "a new day");
        assert_eq!(cap.peek("acme", "c", day + 86_400), "c");
        assert_eq!(cap.peek("acme", "d", day + 86_400), OTHER_TERM);
        assert_eq!(
            cap.admit(&acme, "d", day + 86_400),
            "d",
            "a peek took no room"
        );
    }
}
