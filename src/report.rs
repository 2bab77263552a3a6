//! The UTM performance report: query parsing, grouping of the store's click
//! and conversion counters, unique visitors as the union over each group's
//! cells, and the JSON and CSV forms.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use serde_json::{json, Map, Value};

use crate::conversions::book::ConversionCell;
use crate::conversions::customer::ConversionCounts;
use crate::conversions::money::Currency;
use crate::csv::CsvWriter;
use crate::ids::PartnerId;
use crate::store::prelude::*;
use crate::store::{ClickCount, CounterCell, StoreError, TrafficCount};

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
    /// Which page of rows, from 1 (`report.max_rows` rows a page).
    pub page: usize,
}

/// Highest page number a query may ask for.
const MAX_PAGE: usize = 1_000_000;

impl ReportQuery {
    /// Parses `from`, `to` (UTC days, inclusive), `group_by` and `page`;
    /// other parameters are left to the caller. The range defaults to the
    /// 30 days ending `today`.
    pub fn parse(query: Option<&str>, today: NaiveDate, max_days: u32) -> Result<Self, QueryError> {
        let (mut from, mut to, mut group_by, mut page) = (None, None, None, 1);
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "from" => from = Some(parse_day("from", &value)?),
                "to" => to = Some(parse_day("to", &value)?),
                "group_by" => group_by = Some(parse_group_by(&value)?),
                "page" => page = parse_page(&value)?,
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
        Ok(ReportQuery {
            from,
            to,
            group_by,
            page,
        })
    }

    fn groups(&self, dimension: Dimension) -> bool {
        self.group_by.contains(&dimension)
    }
}

fn parse_day(param: &'static str, value: &str) -> Result<NaiveDate, QueryError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| query_error(param, format!("`{param}` must be a date like 2026-11-23")))
}

fn parse_page(value: &str) -> Result<usize, QueryError> {
    value
        .parse()
        .ok()
        .filter(|page| (1..=MAX_PAGE).contains(page))
        .ok_or_else(|| query_error("page", format!("`page` is a number from 1 to {MAX_PAGE}")))
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
    pub conversions: ConversionCounts,
    /// Requests that were not clicks, in the same cells.
    pub not_clicks: NotClicks,
}

/// Bots (and link previews) and suspects (the cookie-stuffing guard's);
/// and overwrites: counted clicks that took another partner's visitor
/// (won, in the cell of the click) or this partner's (lost, in the cell
/// of the click that had credited it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotClicks {
    pub bots: u64,
    pub suspects: u64,
    pub overwrites_won: u64,
    pub overwrites_lost: u64,
}

impl NotClicks {
    fn add(&mut self, other: NotClicks) {
        self.bots += other.bots;
        self.suspects += other.suspects;
        self.overwrites_won += other.overwrites_won;
        self.overwrites_lost += other.overwrites_lost;
    }
}

/// What a report row gathers before unique visitors are counted.
#[derive(Default)]
struct Group {
    clicks: u64,
    cells: Vec<CounterCell>,
    conversions: ConversionCounts,
    not_clicks: NotClicks,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub partner: PartnerId,
    pub query: ReportQuery,
    /// The rows of the page asked for.
    pub rows: Vec<Row>,
    /// Rows of every page.
    pub rows_total: usize,
    /// The next page, when there are more rows.
    pub next_page: Option<usize>,
    /// Totals over every row, not only the page's.
    pub totals: Row,
}

/// Builds one partner's report from the store's click counters: the rows
/// of page `query.page`, `max_rows` rows a page, and the totals of all.
pub async fn build(
    store: &dyn Store,
    partner: &PartnerId,
    query: &ReportQuery,
    max_rows: usize,
) -> Result<Report, StoreError> {
    let counts = store.click_counts(partner, query.from, query.to).await?;
    let conversions = store
        .conversion_counts(partner, query.from, query.to)
        .await?;
    let traffic = store.traffic_counts(partner, query.from, query.to).await?;
    // Grouping is CPU work proportional to the cells (thousands, for a
    // long range): off the runtime's threads, which answer redirects, and
    // at the lowest priority.
    let grouping = query.clone();
    let (groups, counts, totals) =
        crate::low_priority::run(move || group(&grouping, counts, &conversions, &traffic)).await;
    let rows_total = groups.len();
    let skip = (query.page - 1).saturating_mul(max_rows);
    let mut rows = Vec::with_capacity(rows_total.saturating_sub(skip).min(max_rows));
    for (key, group) in groups.into_iter().skip(skip).take(max_rows) {
        rows.push(Row {
            campaign: key.campaign,
            term: key.term,
            day: key.day,
            clicks: group.clicks,
            unique_visitors: store.unique_visitors(partner, &group.cells).await?,
            conversions: group.conversions,
            not_clicks: group.not_clicks,
        });
    }
    let all_cells: Vec<CounterCell> = counts.iter().map(|c| c.cell.clone()).collect();
    let totals = Row {
        campaign: None,
        term: None,
        day: None,
        clicks: counts.iter().map(|c| c.clicks).sum(),
        unique_visitors: store.unique_visitors(partner, &all_cells).await?,
        conversions: totals.conversions,
        not_clicks: totals.not_clicks,
    };
    Ok(Report {
        partner: partner.clone(),
        query: query.clone(),
        rows,
        rows_total,
        next_page: (skip.saturating_add(max_rows) < rows_total).then_some(query.page + 1),
        totals,
    })
}

/// The report's rows by key (every page's), with the click counts they
/// came from, and the conversions and requests that were not clicks of
/// all (`Group::clicks` and `cells` unused there).
fn group(
    query: &ReportQuery,
    counts: Vec<ClickCount>,
    conversions: &[(ConversionCell, ConversionCounts)],
    traffic: &[TrafficCount],
) -> (BTreeMap<RowKey, Group>, Vec<ClickCount>, Group) {
    let row_key = |day: NaiveDate, campaign: &str, term: &str| RowKey {
        campaign: query
            .groups(Dimension::Campaign)
            .then(|| campaign.to_owned()),
        term: query.groups(Dimension::Term).then(|| term.to_owned()),
        day: query.groups(Dimension::Day).then_some(day),
    };
    let mut groups: BTreeMap<RowKey, Group> = BTreeMap::new();
    for count in &counts {
        let cell = &count.cell;
        let group = groups
            .entry(row_key(cell.day, &cell.campaign, &cell.term))
            .or_default();
        group.clicks += count.clicks;
        group.cells.push(cell.clone());
    }
    let mut totals = Group::default();
    for (cell, counts) in conversions {
        groups
            .entry(row_key(cell.day, &cell.campaign, &cell.term))
            .or_default()
            .conversions
            .add(counts);
        totals.conversions.add(counts);
    }
    for count in traffic {
        let cell = &count.cell;
        let tally = NotClicks {
            bots: count.bots,
            suspects: count.suspects,
            overwrites_won: count.overwrites_won,
            overwrites_lost: count.overwrites_lost,
        };
        groups
            .entry(row_key(cell.day, &cell.campaign, &cell.term))
            .or_default()
            .not_clicks
            .add(tally);
        totals.not_clicks.add(tally);
    }
    (groups, counts, totals)
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
        self.insert_counts(&mut row);
        Value::Object(row)
    }

    fn insert_counts(&self, row: &mut Map<String, Value>) {
        for column in Column::ALL {
            row.insert(column.name().into(), column.json(self));
        }
    }

    /// Signups per click, to 4 places; `None` without clicks.
    pub fn conversion_rate(&self) -> Option<f64> {
        (self.clicks > 0).then(|| {
            let rate = self.conversions.signups as f64 / self.clicks as f64;
            (rate * 10_000.0).round() / 10_000.0
        })
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
        let totals = self.totals.totals_json();
        json!({
            "partner": self.partner,
            "from": self.query.from,
            "to": self.query.to,
            "group_by": group_by,
            "page": self.query.page,
            "next_page": self.next_page,
            "rows_total": self.rows_total,
            "rows": self.rows.iter().map(|r| r.to_json(&self.query)).collect::<Vec<_>>(),
            "totals": totals,
        })
    }

    /// Every currency with revenue or commission in the report, sorted.
    fn currencies(&self) -> Vec<Currency> {
        self.totals.currencies()
    }

    /// RFC 4180 CSV, safe to open in a spreadsheet (`csv.rs`): a header,
    /// one line per row, then the totals (labelled `total` in the first
    /// column); one revenue and one commission column per currency.
    pub fn to_csv(&self) -> String {
        let dims = &self.query.group_by;
        let currencies = self.currencies();
        let mut header: Vec<String> = if dims.is_empty() {
            vec!["row".into()]
        } else {
            dims.iter()
                .map(|d| dimension_column(*d).to_owned())
                .collect()
        };
        header.extend(count_columns(&currencies));
        let mut out = CsvWriter::new();
        out.line(&header);
        // Without dimensions the one row is the totals.
        let rows = if dims.is_empty() {
            &[][..]
        } else {
            &self.rows[..]
        };
        for row in rows {
            let mut fields: Vec<String> = dims.iter().map(|d| row.dimension(*d)).collect();
            fields.extend(row.csv_counts(&currencies));
            out.line(&fields);
        }
        let mut totals = vec!["total".to_owned()];
        totals.extend((1..dims.len()).map(|_| String::new()));
        totals.extend(self.totals.csv_counts(&currencies));
        out.line(&totals);
        out.finish()
    }
}

/// The sum of several partners' totals.
pub fn sum_totals(reports: &[Report]) -> Row {
    let mut totals = Row {
        campaign: None,
        term: None,
        day: None,
        clicks: 0,
        unique_visitors: 0,
        conversions: ConversionCounts::default(),
        not_clicks: NotClicks::default(),
    };
    for report in reports {
        totals.clicks += report.totals.clicks;
        totals.not_clicks.add(report.totals.not_clicks);
        totals.unique_visitors += report.totals.unique_visitors;
        totals.conversions.add(&report.totals.conversions);
    }
    totals
}

/// Several partners' reports as one CSV: a `partner` column first, then
/// each partner's rows and totals, then the sum of all.
pub fn all_to_csv(reports: &[Report], totals: &Row) -> String {
    let currencies = totals.currencies();
    let dims: Vec<Dimension> = reports
        .first()
        .map(|r| r.query.group_by.clone())
        .unwrap_or_default();
    let mut header = vec!["partner".to_owned()];
    header.extend(dims.iter().map(|d| dimension_column(*d).to_owned()));
    header.extend(count_columns(&currencies));
    let mut out = CsvWriter::new();
    out.line(&header);
    for report in reports {
        for row in &report.rows {
            let mut fields = vec![report.partner.to_string()];
            fields.extend(dims.iter().map(|d| row.dimension(*d)));
            fields.extend(row.csv_counts(&currencies));
            out.line(&fields);
        }
    }
    let mut last = vec!["total".to_owned()];
    last.extend(dims.iter().map(|_| String::new()));
    last.extend(totals.csv_counts(&currencies));
    out.line(&last);
    out.finish()
}

fn dimension_column(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Campaign => "utm_campaign",
        Dimension::Term => "utm_term",
        Dimension::Day => "day",
    }
}

/// The report's figures, in the order every form shows them: the JSON
/// rows and totals, the CSV columns, and the dashboard's table
/// (`api/dashboard.html`, whose cells are named `data-col` after them).
/// A new figure is a new variant: each match below must then say how it
/// reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Clicks,
    UniqueVisitors,
    Signups,
    ConversionRate,
    Customers,
    /// One CSV column per currency (`revenue_USD`, …); an object by
    /// currency in JSON.
    Revenue,
    /// Likewise.
    Commission,
    /// Requests of bots and link previews: redirected, not counted.
    BotClicks,
    /// Requests the cookie-stuffing guard caught: redirected, no cookie,
    /// not counted.
    SuspectClicks,
    /// Counted clicks that took a visitor another partner's cookie credited.
    OverwritesWon,
    /// Counted clicks of other partners that took this partner's visitor.
    OverwritesLost,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Clicks,
        Column::UniqueVisitors,
        Column::Signups,
        Column::ConversionRate,
        Column::Customers,
        Column::Revenue,
        Column::Commission,
        Column::BotClicks,
        Column::SuspectClicks,
        Column::OverwritesWon,
        Column::OverwritesLost,
    ];

    /// The JSON key and CSV header (before the currency suffix).
    pub fn name(self) -> &'static str {
        match self {
            Column::Clicks => "clicks",
            Column::UniqueVisitors => "unique_visitors",
            Column::Signups => "signups",
            Column::ConversionRate => "conversion_rate",
            Column::Customers => "customers",
            Column::Revenue => "revenue",
            Column::Commission => "commission",
            Column::BotClicks => "bot_clicks",
            Column::SuspectClicks => "suspect_clicks",
            Column::OverwritesWon => "overwrites_won",
            Column::OverwritesLost => "overwrites_lost",
        }
    }

    /// Money columns hold amounts by currency.
    fn is_money(self) -> bool {
        match self {
            Column::Revenue | Column::Commission => true,
            Column::Clicks
            | Column::UniqueVisitors
            | Column::Signups
            | Column::ConversionRate
            | Column::Customers
            | Column::BotClicks
            | Column::SuspectClicks
            | Column::OverwritesWon
            | Column::OverwritesLost => false,
        }
    }

    fn json(self, row: &Row) -> Value {
        let c = &row.conversions;
        match self {
            Column::Clicks => json!(row.clicks),
            Column::UniqueVisitors => json!(row.unique_visitors),
            Column::Signups => json!(c.signups),
            Column::ConversionRate => json!(row.conversion_rate()),
            Column::Customers => json!(c.customers),
            Column::Revenue => json!(c.revenue),
            Column::Commission => json!(c.commission),
            Column::BotClicks => json!(row.not_clicks.bots),
            Column::SuspectClicks => json!(row.not_clicks.suspects),
            Column::OverwritesWon => json!(row.not_clicks.overwrites_won),
            Column::OverwritesLost => json!(row.not_clicks.overwrites_lost),
        }
    }

    fn csv_headers(self, currencies: &[Currency]) -> Vec<String> {
        if self.is_money() {
            currencies
                .iter()
                .map(|c| format!("{}_{c}", self.name()))
                .collect()
        } else {
            vec![self.name().to_owned()]
        }
    }

    fn csv(self, row: &Row, currencies: &[Currency]) -> Vec<String> {
        let c = &row.conversions;
        let by_currency = |amounts: &BTreeMap<Currency, rust_decimal::Decimal>| {
            currencies
                .iter()
                .map(|cur| amounts.get(cur).map(|a| a.to_string()).unwrap_or_default())
                .collect()
        };
        match self {
            Column::Clicks => vec![row.clicks.to_string()],
            Column::UniqueVisitors => vec![row.unique_visitors.to_string()],
            Column::Signups => vec![c.signups.to_string()],
            Column::ConversionRate => vec![row
                .conversion_rate()
                .map(|r| r.to_string())
                .unwrap_or_default()],
            Column::Customers => vec![c.customers.to_string()],
            Column::Revenue => by_currency(&c.revenue),
            Column::Commission => by_currency(&c.commission),
            Column::BotClicks => vec![row.not_clicks.bots.to_string()],
            Column::SuspectClicks => vec![row.not_clicks.suspects.to_string()],
            Column::OverwritesWon => vec![row.not_clicks.overwrites_won.to_string()],
            Column::OverwritesLost => vec![row.not_clicks.overwrites_lost.to_string()],
        }
    }
}

fn count_columns(currencies: &[Currency]) -> Vec<String> {
    Column::ALL
        .iter()
        .flat_map(|column| column.csv_headers(currencies))
        .collect()
}

impl Row {
    /// The totals object of the JSON form.
    pub fn totals_json(&self) -> Value {
        let mut totals = Map::new();
        self.insert_counts(&mut totals);
        Value::Object(totals)
    }

    fn currencies(&self) -> Vec<Currency> {
        let c = &self.conversions;
        let mut all: Vec<Currency> = c
            .revenue
            .keys()
            .chain(c.commission.keys())
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn dimension(&self, dimension: Dimension) -> String {
        match dimension {
            Dimension::Campaign => self.campaign.clone().unwrap_or_default(),
            Dimension::Term => self.term.clone().unwrap_or_default(),
            Dimension::Day => self.day.map(|d| d.to_string()).unwrap_or_default(),
        }
    }

    fn csv_counts(&self, currencies: &[Currency]) -> Vec<String> {
        Column::ALL
            .iter()
            .flat_map(|column| column.csv(self, currencies))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// The dashboard's table shows the report's columns, in their order:
    /// a cell named after each (`data-col`), and a heading each after the
    /// campaign and the term.
    #[test]
    fn the_dashboard_table_follows_the_report_columns() {
        let page = include_str!("api/dashboard.html");
        let cells: Vec<&str> = page
            .split("<td data-col=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let columns: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(cells, columns);
        let head = page
            .lines()
            .find(|line| line.contains("<thead>") && line.contains("first-col"))
            .expect("the report table has a head");
        assert_eq!(
            head.matches("</th>").count(),
            2 + Column::ALL.len(),
            "{head}"
        );
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
