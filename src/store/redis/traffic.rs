//! Bot, suspect and overwrite tallies in Redis: a hash per partner and
//! day beside its click counters (`b`, `s`, `w` and `l` fields, each
//! followed by `\tcampaign\tterm`), added to by one script per partner and batch, which a batch
//! marker on the partner's slot makes count once.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::click_batch::day_expiry;
use super::*;
use crate::store::{TrafficBatch, TrafficCell, TrafficCount};

static ADD_TRAFFIC: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/add_traffic.lua")));

impl RedisStore {
    pub(super) async fn write_traffic(&self, batch: &TrafficBatch) -> Result<(), StoreError> {
        let mut by_partner: BTreeMap<&str, Vec<&TrafficCell>> = BTreeMap::new();
        for cell in &batch.cells {
            by_partner.entry(&cell.partner).or_default().push(cell);
        }
        let id: String = batch.id.iter().map(|b| format!("{b:02x}")).collect();
        for (partner, cells) in by_partner {
            let mut invocation = ADD_TRAFFIC.prepare_invoke();
            invocation.key(keys::owned(|k| {
                keys::book(k, partner, &format!("traffic_batch:{id}"))
            }));
            let mut days: Vec<NaiveDate> = Vec::new();
            for cell in &cells {
                if !days.contains(&cell.day) {
                    days.push(cell.day);
                    invocation.key(traffic_key(partner, cell.day));
                }
            }
            for cell in cells {
                let index = days.iter().position(|d| *d == cell.day).unwrap_or(0) + 2;
                invocation
                    .arg(index)
                    .arg(format!("{}\t{}", cell.campaign, cell.term))
                    .arg(cell.bots)
                    .arg(cell.suspects)
                    .arg(cell.overwrites_won)
                    .arg(cell.overwrites_lost)
                    .arg(day_expiry(cell.day, self.window_secs));
            }
            invocation
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    pub(super) async fn read_traffic(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TrafficCount>, StoreError> {
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(traffic_key(partner.as_str(), *day));
        }
        let maps: Vec<HashMap<String, u64>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut cells: BTreeMap<CounterCellKey, [u64; 4]> = BTreeMap::new();
        for (day, map) in days.iter().zip(maps) {
            for (field, n) in map {
                let mut parts = field.splitn(3, '\t');
                let (Some(kind), Some(campaign)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let term = parts.next().unwrap_or("");
                let tally = cells
                    .entry((*day, campaign.to_owned(), term.to_owned()))
                    .or_default();
                if let Some(at) = ["b", "s", "w", "l"].iter().position(|k| *k == kind) {
                    tally[at] += n;
                }
            }
        }
        Ok(cells
            .into_iter()
            .map(
                |((day, campaign, term), [bots, suspects, won, lost])| TrafficCount {
                    cell: CounterCell {
                        day,
                        campaign,
                        term,
                    },
                    bots,
                    suspects,
                    overwrites_won: won,
                    overwrites_lost: lost,
                },
            )
            .collect())
    }
}

type CounterCellKey = (NaiveDate, String, String);

/// The tallies of `partner`'s `day`, on the partner's slot.
fn traffic_key(partner: &str, day: NaiveDate) -> String {
    keys::owned(|k| keys::book(k, partner, &format!("traffic:{day}")))
}
