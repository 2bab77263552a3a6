//! Click records packed by batch: one row per flushed batch instead of one
//! row per click, found again by click id through a small key table.
//!
//! A row per click cost each click a B-tree insert and six bound values,
//! about a third of the embedded store's work per click under load
//! (README, "The embedded store's click writes"). A batch is written as
//! one body (its records end to end, in id order) and one key row
//! (`first`, `last`, newest `at`). Click ids begin with their creation time
//! in milliseconds, and a body never spans more than `MAX_SPAN_MS` of them,
//! so the body holding an id is among the few whose `last` lies between
//! the id and `MAX_SPAN_MS` after it.
//!
//! A batch is known by its last id: written again (the flusher retries the
//! very batch that failed or timed out) it is recognised and adds nothing.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::ids::{ClickId, VisitorId};
use crate::store::{Click, StoreError};

/// Longest stretch of click-id time one body covers. Batches taken from
/// the queue span the flush interval (50 ms by default); a longer one (a
/// backlog, a migration) is cut into bodies of this span.
pub const MAX_SPAN_MS: u64 = 2_000;

/// First byte of a body: the record layout below.
const FORMAT: u8 = 1;
/// Fixed part of a record: id, visitor, `at` (i64 little endian).
const FIXED: usize = 16 + 16 + 8;

/// The creation time in milliseconds at the front of a click id.
fn id_ms(id: &[u8; 16]) -> u64 {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id[..6]);
    u64::from_be_bytes(ms)
}

/// The largest id created at `ms` (saturating at the 48-bit maximum).
fn last_id_at(ms: u64) -> [u8; 16] {
    let mut id = [0xff; 16];
    id[..6].copy_from_slice(&ms.min((1 << 48) - 1).to_be_bytes()[2..]);
    id
}

/// `clicks`, sorted by id, cut where a body would span more than
/// `MAX_SPAN_MS`.
fn spans<'a, 'c>(clicks: &'a [&'c Click]) -> impl Iterator<Item = &'a [&'c Click]> {
    let mut rest = clicks;
    std::iter::from_fn(move || {
        let first = id_ms(&rest.first()?.click_id.0);
        let end = rest
            .iter()
            .position(|c| id_ms(&c.click_id.0) > first + MAX_SPAN_MS)
            .unwrap_or(rest.len());
        let (body, after) = rest.split_at(end);
        rest = after;
        Some(body)
    })
}

/// The records of `clicks` end to end: id, visitor, `at`, then partner,
/// campaign and term, each a length (u16 little endian) and UTF-8 bytes
/// (no term: length 0).
pub fn encode(clicks: &[&Click]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + clicks.len() * (FIXED + 6 + 24));
    body.push(FORMAT);
    for click in clicks {
        body.extend_from_slice(&click.click_id.0);
        body.extend_from_slice(&click.visitor_id.0);
        body.extend_from_slice(&click.at.to_le_bytes());
        for text in [
            &*click.partner,
            &*click.campaign,
            click.term.as_deref().unwrap_or(""),
        ] {
            let len = u16::try_from(text.len()).expect("ids and terms are bounded at the edge");
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(text.as_bytes());
        }
    }
    body
}

/// A body that does not follow the layout: a damaged file, never a request.
fn corrupt(what: &str) -> StoreError {
    StoreError::corrupt("click_bodies", format!("a click record {what}"))
}

/// Reads a body's records one by one.
struct Records<'b> {
    rest: &'b [u8],
}

impl<'b> Records<'b> {
    fn new(body: &'b [u8]) -> Result<Self, StoreError> {
        match body.split_first() {
            Some((&FORMAT, rest)) => Ok(Records { rest }),
            _ => Err(corrupt("of an unknown format")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8], StoreError> {
        if self.rest.len() < n {
            return Err(corrupt("cut short"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn text(&mut self) -> Result<&'b str, StoreError> {
        let len = self.take(2)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| corrupt("not UTF-8"))
    }

    /// The next record's id, and the record if `want` says so.
    fn next(
        &mut self,
        want: impl Fn(&[u8; 16]) -> bool,
    ) -> Result<Option<Option<Click>>, StoreError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let fixed = self.take(FIXED)?;
        let id: [u8; 16] = fixed[..16].try_into().expect("16 bytes");
        let (partner, campaign, term) = (self.text()?, self.text()?, self.text()?);
        if !want(&id) {
            return Ok(Some(None));
        }
        Ok(Some(Some(Click {
            click_id: ClickId(id),
            visitor_id: VisitorId(fixed[16..32].try_into().expect("16 bytes")),
            at: i64::from_le_bytes(fixed[32..40].try_into().expect("8 bytes")),
            partner: partner.into(),
            campaign: campaign.into(),
            term: (!term.is_empty()).then(|| term.into()),
        })))
    }
}

/// The click `id` in `body`, if there.
pub fn find(body: &[u8], id: &ClickId) -> Result<Option<Click>, StoreError> {
    let mut records = Records::new(body)?;
    while let Some(record) = records.next(|found| found == &id.0)? {
        if record.is_some() {
            return Ok(record);
        }
    }
    Ok(None)
}

/// Every click in `body`.
#[cfg(test)]
pub fn decode(body: &[u8]) -> Result<Vec<Click>, StoreError> {
    let mut records = Records::new(body)?;
    let mut clicks = Vec::new();
    while let Some(record) = records.next(|_| true)? {
        clicks.extend(record);
    }
    Ok(clicks)
}

/// Stores `clicks` (sorted by id, no id twice) unless this very batch was
/// stored before; answers whether it was new.
pub fn append(tx: &Transaction<'_>, clicks: &[&Click]) -> Result<bool, StoreError> {
    let Some(last) = clicks.last() else {
        return Ok(false);
    };
    // A batch's bodies go in one transaction: if the body holding its last
    // id is there, all of them are.
    let known = tx
        .prepare_cached("SELECT 1 FROM click_batches WHERE last = ?1")?
        .query_row([last.click_id.0], |_| Ok(()))
        .optional()?;
    if known.is_some() {
        return Ok(false);
    }
    for body in spans(clicks) {
        let newest = body.iter().map(|c| c.at).max().unwrap_or_default();
        tx.prepare_cached("INSERT INTO click_bodies (clicks) VALUES (?1)")?
            .execute([encode(body)])?;
        let (first, last) = (body[0].click_id.0, body[body.len() - 1].click_id.0);
        tx.prepare_cached(
            "INSERT INTO click_batches (last, first, at, body) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![last, first, newest, tx.last_insert_rowid()])?;
    }
    Ok(true)
}

/// The click `id`, if stored.
pub fn lookup(conn: &rusqlite::Connection, id: &ClickId) -> Result<Option<Click>, StoreError> {
    let until = last_id_at(id_ms(&id.0).saturating_add(MAX_SPAN_MS));
    let mut bodies = conn.prepare_cached(
        "SELECT b.clicks FROM click_batches k JOIN click_bodies b ON b.id = k.body \
         WHERE k.last >= ?1 AND k.last <= ?2 AND k.first <= ?1",
    )?;
    let mut rows = bodies.query(params![id.0, until])?;
    while let Some(row) = rows.next()? {
        let body = row
            .get_ref(0)?
            .as_blob()
            .map_err(|_| corrupt("not a blob"))?;
        if let Some(click) = find(body, id)? {
            return Ok(Some(click));
        }
    }
    Ok(None)
}

/// Deletes the bodies, among the next `max` after key `from`, whose every
/// click is older than `horizon`; answers how many keys it looked at and
/// the last one.
pub fn expire(
    tx: &Transaction<'_>,
    from: &[u8],
    max: usize,
    horizon: i64,
) -> Result<(usize, Option<Vec<u8>>), StoreError> {
    let keys: Vec<(Vec<u8>, i64, i64)> = tx
        .prepare_cached(
            "SELECT last, at, body FROM click_batches WHERE last > ?1 ORDER BY last LIMIT ?2",
        )?
        .query_map(params![from, max], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    for (last, _, body) in keys.iter().filter(|(_, at, _)| *at < horizon) {
        tx.prepare_cached("DELETE FROM click_bodies WHERE id = ?1")?
            .execute([body])?;
        tx.prepare_cached("DELETE FROM click_batches WHERE last = ?1")?
            .execute([last])?;
    }
    Ok((keys.len(), keys.last().map(|(last, _, _)| last.clone())))
}

/// Schema 4's move: the rows of schema 1's `clicks` table into bodies,
/// then the table goes.
pub fn migrate_rows(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    const AT_ONCE: usize = 10_000;
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows: Vec<Click> = tx
            .prepare(
                "SELECT id, visitor, partner, campaign, term, at FROM clicks \
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, AT_ONCE], |row| {
                let term: String = row.get(4)?;
                Ok(Click {
                    click_id: ClickId(row.get(0)?),
                    visitor_id: VisitorId(row.get(1)?),
                    partner: row.get::<_, String>(2)?.into(),
                    campaign: row.get::<_, String>(3)?.into(),
                    term: (!term.is_empty()).then(|| term.into()),
                    at: row.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = last.click_id.0.to_vec();
        let refs: Vec<&Click> = rows.iter().collect();
        for batch in refs.chunks(512) {
            append(tx, batch).map_err(|e| {
                rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(
                    e.to_string(),
                )))
            })?;
        }
        if rows.len() < AT_ONCE {
            break;
        }
    }
    tx.execute_batch("DROP TABLE clicks;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn click_at(ms: u64, n: u8, term: Option<&str>) -> Click {
        let mut id = [n; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        Click {
            click_id: ClickId(id),
            visitor_id: VisitorId([n; 16]),
            partner: Arc::from("acme"),
            campaign: Arc::from("spring"),
            term: term.map(Arc::from),
            at: (ms / 1000) as i64,
        }
    }

    #[test]
    fn a_body_gives_back_every_click_and_finds_each() {
        let clicks = [
            click_at(1_000, 1, Some("a")),
            click_at(1_001, 2, None),
            click_at(1_002, 3, Some("ünïcode")),
        ];
        let refs: Vec<&Click> = clicks.iter().collect();
        let body = encode(&refs);
        assert_eq!(decode(&body).unwrap(), clicks);
        for click in &clicks {
            assert_eq!(find(&body, &click.click_id).unwrap().as_ref(), Some(click));
        }
        assert_eq!(find(&body, &ClickId([9; 16])).unwrap(), None);
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_panic() {
        let click = click_at(1_000, 1, Some("term"));
        let body = encode(&[&click]);
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err() || cut == 1, "cut at {cut}");
        }
        let mut other = body.clone();
        other[0] = 2;
        assert!(find(&other, &click.click_id).is_err());
    }

    #[test]
    fn no_body_spans_more_than_max_span() {
        let clicks: Vec<Click> = [
            0,
            10,
            MAX_SPAN_MS,
            MAX_SPAN_MS + 1,
            3 * MAX_SPAN_MS,
            3 * MAX_SPAN_MS + 5,
        ]
        .iter()
        .enumerate()
        .map(|(n, ms)| click_at(10_000 + ms, n as u8, None))
        .collect();
        let refs: Vec<&Click> = clicks.iter().collect();
        let cut: Vec<usize> = spans(&refs).map(<[_]>::len).collect();
        assert_eq!(cut, vec![3, 1, 2]);
        // Evenly spaced ids a little under the span apart: neighbours are
        // close, but a body still ends one span after its first id.
        let steady: Vec<Click> = (0..10)
            .map(|n| click_at(10_000 + n * (MAX_SPAN_MS / 3), n as u8, None))
            .collect();
        let refs: Vec<&Click> = steady.iter().collect();
        for body in spans(&refs) {
            let (first, last) = (
                id_ms(&body[0].click_id.0),
                id_ms(&body[body.len() - 1].click_id.0),
            );
            assert!(last - first <= MAX_SPAN_MS);
        }
        assert_eq!(spans(&refs).map(<[_]>::len).sum::<usize>(), 10);
    }
}
