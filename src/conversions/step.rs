//! One optimistic step on a partner's book, for the worker and for payouts
//! alike: load what the step needs, compute the change from it, commit it
//! only if the book is still at the version read, else read again.

use chrono::Utc;

use crate::conversions::book::{BookRequest, BookView, Changes, Rules};
use crate::ids::PartnerId;
use crate::store::prelude::*;
use crate::store::{Commit, StoreError};
use crate::webhooks::outbox;

/// What a computation makes of a loaded book.
pub enum Computed<T> {
    /// The change to commit, and what the caller learns from it.
    Done(Changes, T),
    /// More of the book is needed: load this and compute again.
    Load(BookRequest),
}

/// Why a step did not commit.
#[derive(Debug)]
pub enum StepError<E> {
    Store(StoreError),
    /// The computation refused (a payout below the minimum, …).
    Refused(E),
}

impl<E> From<StoreError> for StepError<E> {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

/// Loads, computes and commits once: `None` when the book moved between
/// the read and the commit. The webhook events the change reports are
/// added to it here, for every kind of step alike, and committed with it.
pub async fn try_commit<T, E>(
    store: &dyn Store,
    rules: &Rules,
    partner: &PartnerId,
    mut request: BookRequest,
    mut compute: impl FnMut(BookView, &BookRequest) -> Result<Computed<T>, E>,
) -> Result<Option<(Changes, T)>, StepError<E>> {
    loop {
        let view = store.load_book(partner, &request).await?;
        let version = view.version;
        let now = Utc::now();
        let before = outbox::Before::of(&view, rules, now);
        match compute(view, &request).map_err(StepError::Refused)? {
            Computed::Load(more) => request = more,
            Computed::Done(mut changes, out) => {
                changes.outbox = outbox::events(partner, &before, &changes, rules, now);
                return match store.commit_book(partner, version, &changes).await? {
                    Commit::Applied => Ok(Some((changes, out))),
                    Commit::Conflict => Ok(None),
                };
            }
        }
    }
}

/// `try_commit` until it commits, at most `attempts` times; then the book
/// is `Contended`.
pub async fn commit_with_retry<T, E>(
    store: &dyn Store,
    rules: &Rules,
    partner: &PartnerId,
    request: &BookRequest,
    attempts: usize,
    mut compute: impl FnMut(BookView, &BookRequest) -> Result<Computed<T>, E>,
) -> Result<(Changes, T), StepError<E>> {
    for _ in 0..attempts {
        if let Some(done) = try_commit(store, rules, partner, request.clone(), &mut compute).await?
        {
            return Ok(done);
        }
    }
    Err(StepError::Store(StoreError::Contended(format!(
        "the book of `{partner}` kept changing"
    ))))
}
