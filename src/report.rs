//! The UTM performance report: query parsing, grouping of the store's
//! counters, and unique visitors as the union over each group's cells.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use serde_json::{json, Map, Value};

use crate::ids::PartnerId;
use crate::store::{CounterCell, Store, StoreError};

/// Days covered when the query gives no range.
const DEFAULT_DAYS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Campaign,
    Term,
    Day,
}

/// A report query that failed; `param` names the query parameter.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub param: &'static str,
    pub message: String,
}

fn query_error(param: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        param,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: Vec<Dimension>,
}

impl ReportQuery {
    /// Parses `from`, `to` (UTC days, inclusive) and `group_by`; other
    /// parameters are left to the caller. The range defaults to the 30 days
    /// ending `today`.
    pub fn parse(query: Option<&str>, today: NaiveDate, max_days: u32) -> Result<Self, QueryError> {
        let (mut from, mut to, mut group_by) = (None, None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "from" => from = Some(parse_day("from", &value)?),
                "to" => to = Some(parse_day("to", &value)?),
                "group_by" => group_by = Some(parse_group_by(&value)?),
                _ => {}
            }
        }
        let to = to.unwrap_or(today);
        let from = from.unwrap_or_else(|| to - Days::new(DEFAULT_DAYS - 1));
        if to < from {
            return Err(query_error("to", "`to` is before `from`"));
        }
        if (to - from).num_days() >= i64::from(max_days) {
            return Err(query_error(
                "to",
                format!("the range from `from` to `to` is longer than {max_days} days"),
            ));
        }
        let group_by = group_by.unwrap_or_else(|| vec![Dimension::Campaign, Dimension::Term]);
        Ok(ReportQuery { from, to, group_by })
    }

    fn groups(&self, dimension: Dimension) -> bool {
        self.group_by.contains(&dimension)
    }
}

fn parse_day(param: &'static str, value: &str) -> Result<NaiveDate, QueryError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| query_error(param, format!("`{param}` must be a date like 2026-11-23")))
}

fn parse_group_by(value: &str) -> Result<Vec<Dimension>, QueryError> {
    let mut dims = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let dim = match part {
            "campaign" => Dimension::Campaign,
            "term" => Dimension::Term,
            "day" => Dimension::Day,
            _ => {
                return Err(query_error(
                    "group_by",
                    "`group_by` takes campaign, term and day, comma separated",
                ))
            }
        };
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    Ok(dims)
}

/// The key of a report row: the grouped dimensions, `None` where not grouped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    campaign: Option<String>,
    term: Option<String>,
    day: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub campaign: Option<String>,
    /// `Some("")` for clicks without a term when grouped by term.
    pub term: Option<String>,
    pub day: Option<NaiveDate>,
    pub clicks: u64,
    pub unique_visitors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub partner: PartnerId,
    pub query: ReportQuery,
    pub rows: Vec<Row>,
    pub totals: Row,
}

/// Builds one partner's report from the store's click counters.
pub async fn build(
    store: &dyn Store,
    partner: &PartnerId,
    query: &ReportQuery,
) -> Result<Report, StoreError> {
    let counts = store.click_counts(partner, query.from, query.to).await?;
    let mut groups: BTreeMap<RowKey, (u64, Vec<CounterCell>)> = BTreeMap::new();
    for count in &counts {
        let cell = &count.cell;
        let key = RowKey {
            campaign: query
                .groups(Dimension::Campaign)
                .then(|| cell.campaign.clone()),
            term: query.groups(Dimension::Term).then(|| cell.term.clone()),
            day: query.groups(Dimension::Day).then_some(cell.day),
        };
        let group = groups.entry(key).or_default();
        group.0 += count.clicks;
        group.1.push(cell.clone());
    }
    let mut rows = Vec::with_capacity(groups.len());
    for (key, (clicks, cells)) in groups {
        rows.push(Row {
            campaign: key.campaign,
            term: key.term,
            day: key.day,
            clicks,
            unique_visitors: store.unique_visitors(partner, &cells).await?,
        });
    }
    let all_cells: Vec<CounterCell> = counts.iter().map(|c| c.cell.clone()).collect();
    let totals = Row {
        campaign: None,
        term: None,
        day: None,
        clicks: counts.iter().map(|c| c.clicks).sum(),
        unique_visitors: store.unique_visitors(partner, &all_cells).await?,
    };
    Ok(Report {
        partner: partner.clone(),
        query: query.clone(),
        rows,
        totals,
    })
}

impl Row {
    fn to_json(&self, query: &ReportQuery) -> Value {
        let mut row = Map::new();
        if query.groups(Dimension::Campaign) {
            row.insert("utm_campaign".into(), json!(self.campaign));
        }
        if query.groups(Dimension::Term) {
            let term = self.term.as_deref().filter(|t| !t.is_empty());
            row.insert("utm_term".into(), json!(term));
        }
        if query.groups(Dimension::Day) {
            row.insert("day".into(), json!(self.day));
        }
        row.insert("clicks".into(), json!(self.clicks));
        row.insert("unique_visitors".into(), json!(self.unique_visitors));
        Value::Object(row)
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        let group_by: Vec<&str> = self
            .query
            .group_by
            .iter()
            .map(|d| match d {
                Dimension::Campaign => "campaign",
                Dimension::Term => "term",
                Dimension::Day => "day",
            })
            .collect();
        json!({
            "partner": self.partner,
            "from": self.query.from,
            "to": self.query.to,
            "group_by": group_by,
            "rows": self.rows.iter().map(|r| r.to_json(&self.query)).collect::<Vec<_>>(),
            "totals": {
                "clicks": self.totals.clicks,
                "unique_visitors": self.totals.unique_visitors,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_range_is_the_last_30_days_grouped_by_campaign_and_term() {
        let q = ReportQuery::parse(None, day("2026-11-23"), 366).unwrap();
        assert_eq!(q.from, day("2026-10-25"));
        assert_eq!(q.to, day("2026-11-23"));
        assert_eq!(q.group_by, vec![Dimension::Campaign, Dimension::Term]);
    }

    #[test]
    fn bad_queries_name_their_parameter() {
        let today = day("2026-11-23");
        let cases = [
            ("from=2026-13-01", "from"),
            ("to=yesterday", "to"),
            ("from=2026-11-10&to=2026-11-01", "to"),
            ("from=2020-01-01&to=2026-01-01", "to"),
            ("group_by=campaign,partner", "group_by"),
        ];
        for (query, param) in cases {
            let err = ReportQuery::parse(Some(query), today, 366).unwrap_err();
            assert_eq!(err.param, param, "{query}");
        }
    }
}
