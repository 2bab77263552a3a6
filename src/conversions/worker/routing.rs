//! The routing step: each event to its customer's partner. A signup
//! resolves its click and claims the customer; the other events follow the
//! claim, or are parked until it comes. Routed events go to the partner's
//! inbox, for the book step.

use super::*;

impl Worker {
    /// What becomes of a delivery whose routing failed: it waits to be
    /// taken again, unless it met a corrupt record `POISON_AFTER` times.
    fn after_failure(&self, delivery: &Delivery, error: &StoreError) -> Routed {
        if !matches!(error, StoreError::Corrupt { .. }) {
            return Routed::Waiting;
        }
        let mut meetings = self
            .corrupt_meetings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if meetings.len() >= MEETINGS_REMEMBERED {
            meetings.clear();
        }
        let count = meetings.entry(delivery.delivery.clone()).or_default();
        *count += 1;
        if *count < POISON_AFTER {
            return Routed::Waiting;
        }
        meetings.remove(&delivery.delivery);
        let raw = serde_json::to_string(&delivery.event).expect("events serialize to JSON");
        Routed::Poison(Unreadable::new(
            delivery.delivery.clone(),
            &raw,
            error.to_string(),
        ))
    }

    /// The routing step of a batch.
    pub(super) async fn route_batch(&self, deliveries: Vec<Delivery>) -> Vec<String> {
        let routed: Vec<Routed> = futures_util::stream::iter(by_customer(deliveries))
            .map(|group| self.route_in_order(group))
            .buffer_unordered(self.store.routing_concurrency())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut done = Vec::new();
        let mut poison = Vec::new();
        let mut by_partner: BTreeMap<PartnerId, Vec<ForBook>> = BTreeMap::new();
        for routed in routed {
            match routed {
                Routed::Book(item) => by_partner
                    .entry(item.referral.partner.clone())
                    .or_default()
                    .push(*item),
                Routed::Finished(delivery, kind, outcome) => {
                    self.metrics.count_event(kind, outcome.label());
                    done.push(delivery);
                }
                Routed::Waiting => {}
                Routed::Poison(entry) => poison.push(entry),
            }
        }
        self.dead_letter(&poison).await;
        let pushed = futures_util::stream::iter(by_partner)
            .map(|(partner, items)| self.push_to_inbox(partner, items))
            .buffer_unordered(CONCURRENT)
            .collect::<Vec<_>>()
            .await;
        done.extend(pushed.into_iter().flatten());
        done
    }

    /// Appends a partner's routed events to its inbox; once they are
    /// there, the customers' parked events they carry are forgotten and the
    /// deliveries are finished.
    async fn push_to_inbox(&self, partner: PartnerId, items: Vec<ForBook>) -> Vec<String> {
        let inbox: Vec<InboxItem> = items
            .iter()
            .map(|item| InboxItem {
                event: item.event.clone(),
                referral: item.referral.clone(),
            })
            .collect();
        if let Err(e) = self.store.push_inbox(&partner, &inbox).await {
            self.metrics.count_store_error("push_inbox");
            tracing::warn!(error = %e, partner = %partner, "events not routed; they will be retried");
            return Vec::new();
        }
        let mut done = Vec::with_capacity(items.len());
        for item in items {
            if let Some((customer, parked)) = &item.unpark {
                if let Err(e) = self.store.unpark(customer, parked).await {
                    // They stay listed until expiry drops them (the claim
                    // exists, so they are not dead letters).
                    self.metrics.count_store_error("unpark");
                    tracing::warn!(error = %e, customer = %customer, "cannot forget parked events");
                }
            }
            done.extend(item.delivery);
        }
        done
    }

    /// The routing step of one customer's events, in delivery order.
    async fn route_in_order(&self, group: Vec<Delivery>) -> Vec<Routed> {
        let mut out = Vec::with_capacity(group.len());
        for delivery in group {
            let routed = match self.route(&delivery).await {
                Ok(routed) => routed,
                Err(e) => {
                    self.metrics.count_store_error("apply_event");
                    tracing::warn!(error = %e, event = %delivery.event.id, "event not applied; it will be retried");
                    vec![self.after_failure(&delivery, &e)]
                }
            };
            out.extend(routed);
        }
        out
    }

    /// Where one event goes: with a signup, the customer's parked events
    /// go too.
    async fn route(&self, delivery: &Delivery) -> Result<Vec<Routed>, StoreError> {
        let event = &delivery.event;
        let kind = event.kind.name();
        let finished = |outcome| Routed::Finished(delivery.delivery.clone(), kind, outcome);
        let EventKind::Signup { attribution, .. } = &event.kind else {
            let route = match self.remembered_claim(event.customer.as_str()) {
                Some(claim) => Route::Claimed(claim),
                None => {
                    let now = Utc::now().timestamp_millis();
                    let route = self.store.route_event(event, now).await?;
                    if let Route::Claimed(claim) = &route {
                        self.remember_claim(event.customer.as_str(), claim);
                    }
                    route
                }
            };
            return Ok(vec![match route {
                Route::Claimed(Some(referral)) => Routed::Book(Box::new(ForBook {
                    event: event.clone(),
                    referral,
                    delivery: Some(delivery.delivery.clone()),
                    unpark: None,
                })),
                Route::Claimed(None) => finished(Outcome::NoEffect),
                Route::Parked => finished(Outcome::Parked),
            }]);
        };
        let resolved = match self.resolve(attribution, event.at).await? {
            Resolution::Click(referral) => Some(referral),
            Resolution::NoClick => None,
            Resolution::NotYet => return Ok(vec![Routed::Waiting]),
        };
        // Always through the store, never the remembered claims: the claim
        // answers the parked events too.
        let (claim, parked) = self
            .store
            .claim_customer(&event.customer, resolved.as_ref())
            .await?;
        self.remember_claim(event.customer.as_str(), &claim);
        let Some(referral) = claim else {
            // Signed up without a valid click: final, and so is what
            // waited for it.
            for waited in &parked {
                self.metrics.count_event(waited.kind.name(), "no_effect");
            }
            self.store.unpark(&event.customer, &parked).await?;
            return Ok(vec![finished(Outcome::NoEffect)]);
        };
        let mut out: Vec<Routed> = parked
            .iter()
            .map(|waited| {
                Routed::Book(Box::new(ForBook {
                    event: waited.clone(),
                    referral: referral.clone(),
                    delivery: None,
                    unpark: None,
                }))
            })
            .collect();
        out.push(Routed::Book(Box::new(ForBook {
            event: event.clone(),
            referral,
            delivery: Some(delivery.delivery.clone()),
            unpark: Some((event.customer.clone(), parked)),
        })));
        Ok(out)
    }

    fn remembered_claim(&self, customer: &str) -> Option<Option<Referral>> {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.get(customer).cloned()
    }

    fn remember_claim(&self, customer: &str, claim: &Option<Referral>) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= CLAIMS_REMEMBERED {
            claims.clear();
        }
        claims.insert(customer.to_owned(), claim.clone());
    }

    /// What credits a signup: its coupon code when the code is known and
    /// its partner enabled (typed at checkout, after any click), else its
    /// click.
    async fn resolve(
        &self,
        attribution: &AttributionRef,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        match attribution {
            AttributionRef::Coupon(code) => self.resolve_coupon(code, signed_up_at).await,
            AttributionRef::CouponAndClick { coupon, click } => {
                match self.resolve_coupon(coupon, signed_up_at).await? {
                    Resolution::NoClick => self.resolve_click(click, signed_up_at).await,
                    credited => Ok(credited),
                }
            }
            click => self.resolve_click(click, signed_up_at).await,
        }
    }

    /// The coupon's partner, if the code is known and the partner enabled.
    /// Its "click" is the signup itself: reported on the signup's day,
    /// under campaign `coupon` and the code as term.
    async fn resolve_coupon(
        &self,
        code: &CouponCode,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        let Some(coupon) = self.store.coupon(code).await? else {
            return Ok(Resolution::NoClick);
        };
        let referral = Referral {
            partner: coupon.partner,
            campaign: COUPON_CAMPAIGN.to_owned(),
            term: Some(code.as_str().to_owned()),
            click_at: signed_up_at.timestamp(),
            found: Some(FoundClick {
                by: FoundBy::Coupon,
                click_id: String::new(),
                visitor_id: String::new(),
            }),
        };
        self.check(Some(referral), signed_up_at).await
    }

    /// The click a signup names, if it counts: a valid signature, a partner
    /// that exists and is enabled, and a signup within the window after the
    /// click (less the clock skew before it).
    async fn resolve_click(
        &self,
        attribution: &AttributionRef,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        let (by, stored) = match attribution {
            AttributionRef::Cookie(value) => {
                let referral = self.signer.verify(value.as_bytes()).and_then(|v| {
                    let a = v.attribution()?;
                    Some(Referral {
                        partner: PartnerId::parse(a.partner).ok()?,
                        campaign: a.campaign.to_owned(),
                        term: a.term.map(str::to_owned),
                        click_at: a.clicked_at,
                        found: Some(FoundClick {
                            by: FoundBy::Cookie,
                            click_id: a.click_id.to_string(),
                            visitor_id: a.visitor_id.to_string(),
                        }),
                    })
                });
                return self.check(referral, signed_up_at).await;
            }
            AttributionRef::ClickId(id) => match ClickId::parse(id) {
                Some(id) => (FoundBy::ClickId, self.store.click(&id).await?),
                None => return Ok(Resolution::NoClick),
            },
            AttributionRef::VisitorId(id) => match VisitorId::parse(id) {
                Some(id) => (FoundBy::VisitorId, self.store.last_click(&id).await?),
                None => return Ok(Resolution::NoClick),
            },
            // `resolve` takes the coupon apart: one inside is not a click.
            AttributionRef::Coupon(_) | AttributionRef::CouponAndClick { .. } => {
                return Ok(Resolution::NoClick)
            }
        };
        let recent = Utc::now().timestamp() - signed_up_at.timestamp() < CLICK_SETTLE_SECS;
        match stored {
            None if recent => Ok(Resolution::NotYet),
            stored => {
                let referral = stored.and_then(|click| referral_of(click, by));
                self.check(referral, signed_up_at).await
            }
        }
    }

    async fn check(
        &self,
        referral: Option<Referral>,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        let Some(referral) = referral else {
            return Ok(Resolution::NoClick);
        };
        let since_click = signed_up_at.timestamp() - referral.click_at;
        let in_window = since_click >= -(self.clock_skew.as_secs() as i64)
            && since_click <= self.window.as_secs() as i64;
        if !in_window {
            return Ok(Resolution::NoClick);
        }
        Ok(match self.store.partner(&referral.partner).await? {
            Some(p) if !p.disabled => Resolution::Click(referral),
            _ => Resolution::NoClick,
        })
    }
}

/// Deliveries grouped by customer, each group in delivery order.
fn by_customer(deliveries: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for delivery in deliveries {
        match group_of.get(delivery.event.customer.as_str()) {
            Some(&g) => groups[g].push(delivery),
            None => {
                group_of.insert(delivery.event.customer.as_str().to_owned(), groups.len());
                groups.push(vec![delivery]);
            }
        }
    }
    groups
}

/// What a signup's attribution leads to.
enum Resolution {
    Click(Referral),
    NoClick,
    /// The click may not be stored yet.
    NotYet,
}

/// The referral a stored click makes, found `by` a click or visitor id;
/// `None` for a click whose partner id is not one (clicks are recorded
/// only for valid ids: a damaged record).
fn referral_of(click: Click, by: FoundBy) -> Option<Referral> {
    Some(Referral {
        partner: PartnerId::parse(&click.partner).ok()?,
        campaign: click.campaign.to_string(),
        term: click.term.as_deref().map(String::from),
        click_at: click.at,
        found: Some(FoundClick {
            by,
            click_id: click.click_id.to_string(),
            visitor_id: click.visitor_id.to_string(),
        }),
    })
}
