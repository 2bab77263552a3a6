//! The book step: the partners whose inbox holds events, each locked by one
//! worker at a time, its events applied to its book in one optimistic
//! commit (`conversions::step`).

use super::*;

impl Worker {
    /// The book step: drains every ready partner's inbox this worker can
    /// lock, until none is left that another worker is not working on;
    /// answers whether some were left because another worker held them.
    pub async fn drain_ready(&self) -> Drained {
        loop {
            let ready = match self.store.ready_partners(READY_AT_ONCE).await {
                Ok(ready) => ready,
                Err(e) => {
                    self.metrics.count_store_error("ready_partners");
                    tracing::warn!(error = %e, "cannot list ready partners; retrying later");
                    return Drained::Idle;
                }
            };
            // A worker's book steps run in its one task, on one thread at
            // a time: holding more books than it can work on at once only
            // keeps other workers from them (with ten partners, one worker
            // held all ten and the other drained none). So while others
            // hold books too, take half of those ready: two workers split
            // them, and with more each still leaves some to the rest.
            let share = match self.sharing.load(Ordering::Relaxed) {
                true => ready.len().div_ceil(2),
                false => ready.len(),
            };
            let (locked, held_elsewhere) = self.lock_books(ready, share.min(CONCURRENT)).await;
            self.sharing.store(held_elsewhere, Ordering::Relaxed);
            let steps = futures_util::stream::iter(locked)
                .map(|partner| self.drain(partner))
                .buffer_unordered(CONCURRENT)
                .collect::<Vec<bool>>()
                .await;
            if !steps.contains(&true) {
                return match held_elsewhere {
                    true => Drained::OthersBusy,
                    false => Drained::Idle,
                };
            }
        }
    }

    /// Locks up to `max` of the ready partners' books; answers those it
    /// locked and whether another worker held any it tried.
    async fn lock_books(&self, ready: Vec<PartnerId>, max: usize) -> (Vec<PartnerId>, bool) {
        let (mut locked, mut held_elsewhere) = (Vec::new(), false);
        for partner in ready {
            if locked.len() == max {
                break;
            }
            match self
                .store
                .lock_book(&partner, &self.holder, self.lock_for)
                .await
            {
                Ok(true) => locked.push(partner),
                Ok(false) => held_elsewhere = true,
                Err(e) => {
                    self.metrics.count_store_error("lock_book");
                    tracing::warn!(error = %e, partner = %partner, "cannot lock a book; retrying later");
                }
            }
        }
        (locked, held_elsewhere)
    }

    /// Applies what waits in one partner's inbox, its book locked by this
    /// worker, then unlocks it; answers whether anything was applied.
    async fn drain(&self, partner: PartnerId) -> bool {
        let drained = match self.drain_locked(&partner).await {
            Ok(drained) => drained,
            Err(e) => {
                self.metrics.count_store_error("apply_event");
                tracing::warn!(error = %e, partner = %partner, "events not applied; they will be retried");
                false
            }
        };
        if let Err(e) = self.store.unlock_book(&partner, &self.holder).await {
            // It expires by itself.
            tracing::warn!(error = %e, partner = %partner, "cannot unlock a book");
        }
        drained
    }

    async fn drain_locked(&self, partner: &PartnerId) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let inbox = self.store.read_inbox(partner, DRAIN_AT_ONCE).await?;
            if inbox.is_empty() {
                self.store.settle_ready(partner).await?;
                return Ok(false);
            }
            self.keep_unreadable(&inbox.unreadable).await?;
            let Some(effects) = self.commit_items(partner, &inbox).await? else {
                continue; // the book moved (a lock that expired): read again
            };
            for item in &inbox.items {
                let outcome = match effects.get(item.event.id.as_str()) {
                    Some(Effect::Applied) | None => Outcome::Applied,
                    Some(Effect::Duplicate) => Outcome::Duplicate,
                    Some(Effect::Parked) => Outcome::Parked,
                };
                self.metrics
                    .count_event(item.event.kind.name(), outcome.label());
            }
            self.store.settle_ready(partner).await?;
            return Ok(true);
        }
        Err(StoreError::Contended(format!(
            "book of `{partner}` kept moving"
        )))
    }

    /// Keeps inbox entries that are not events in the dead letter before
    /// the commit takes them off the inbox (left there, they would stop the
    /// partner's book for good). Should the commit then find the book
    /// moved, the next read keeps them again: listed twice, never lost.
    async fn keep_unreadable(&self, unreadable: &[Unreadable]) -> Result<(), StoreError> {
        if unreadable.is_empty() {
            return Ok(());
        }
        for entry in unreadable {
            tracing::error!(delivery = %entry.delivery, reason = %entry.reason, "dead-lettered: an inbox entry cannot be read");
        }
        let now_ms = Utc::now().timestamp_millis();
        self.store.keep_unreadable(unreadable, now_ms).await?;
        self.metrics
            .events_dead_lettered
            .inc_by(unreadable.len() as u64);
        Ok(())
    }

    /// Applies an inbox's events to the partner's book and takes its
    /// entries off the inbox, atomically; `None` when the book moved since
    /// it was read.
    async fn commit_items(
        &self,
        partner: &PartnerId,
        inbox: &Inbox,
    ) -> Result<Option<HashMap<String, Effect>>, StoreError> {
        let incoming: Vec<Incoming<'_>> = inbox
            .items
            .iter()
            .map(|item| Incoming {
                event: &item.event,
                referral: &item.referral,
            })
            .collect();
        let request = book::request_for(&incoming);
        let step = step::try_commit(
            self.store.as_ref(),
            &self.rules,
            partner,
            request,
            |view, request| {
                let now = Utc::now().timestamp_millis();
                Ok::<_, Infallible>(
                    match book::apply(view, request, &incoming, &self.rules, now) {
                        Applied::Load(more) => Computed::Load(more),
                        Applied::Done(mut changes, effects) => {
                            changes.inbox_taken = inbox.entries();
                            let late = request.history_from.is_some();
                            Computed::Done(changes, (effects, late))
                        }
                    },
                )
            },
        )
        .await;
        let Some((changes, (effects, late))) = step.map_err(|e| match e {
            StepError::Store(e) => e,
            StepError::Refused(never) => match never {},
        })?
        else {
            return Ok(None);
        };
        self.count_commissions(&changes);
        self.metrics.book_steps.inc();
        if late {
            self.metrics.late_batches.inc();
        }
        Ok(Some(effects.into_iter().collect()))
    }

    fn count_commissions(&self, changes: &Changes) {
        for entry in &changes.entries {
            if entry.kind != EntryKind::Commission {
                continue;
            }
            let amount = entry.amount.try_into().unwrap_or(0.0);
            self.metrics.count_commission(entry.currency, amount);
        }
    }
}
