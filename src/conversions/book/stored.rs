//! The records a book step writes, as the stores keep them: the format
//! byte each is written under, and the book as an earlier version wrote
//! it (before `in_payout`), read back as today's.

use super::*;
use crate::conversions::customer::{ConversionCounts, Customer};
use crate::store::record::{Record, POSTCARD_V1};

/// Byte 2: `CurrencyTotals` gained `in_payout`.
const BOOK_V2: u8 = 2;

impl Record for Book {
    const FORMAT: u8 = BOOK_V2;

    fn decode_earlier(format: u8, body: &[u8]) -> Option<Result<Self, postcard::Error>> {
        (format == POSTCARD_V1).then(|| postcard::from_bytes::<BookV1>(body).map(Book::from))
    }
}

impl Record for Customer {}
impl Record for ConversionCounts {}

/// `Book` under format byte 1.
#[derive(Deserialize)]
struct BookV1 {
    arr: Decimal,
    signups: Vec<i64>,
    totals: BTreeMap<Currency, CurrencyTotalsV1>,
    entries: u64,
    latest: Option<EventKey>,
}

#[derive(Deserialize)]
struct CurrencyTotalsV1 {
    available: Decimal,
    paid: Decimal,
    held: Vec<(i64, Decimal)>,
}

impl From<BookV1> for Book {
    fn from(v1: BookV1) -> Book {
        let totals = v1.totals.into_iter().map(|(currency, t)| {
            let totals = CurrencyTotals {
                available: t.available,
                paid: t.paid,
                held: t.held,
                in_payout: Decimal::ZERO,
            };
            (currency, totals)
        });
        Book {
            arr: v1.arr,
            signups: v1.signups,
            totals: totals.collect(),
            entries: v1.entries,
            latest: v1.latest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{decode_record, encode_record};

    /// `CurrencyTotalsV1` as written: available, paid, held.
    type TotalsV1 = (Decimal, Decimal, Vec<(i64, Decimal)>);

    #[derive(Serialize)]
    struct WrittenV1 {
        arr: Decimal,
        signups: Vec<i64>,
        totals: BTreeMap<Currency, TotalsV1>,
        entries: u64,
        latest: Option<EventKey>,
    }

    #[test]
    fn a_book_written_before_payouts_had_a_status_reads_back() {
        let v1 = WrittenV1 {
            arr: Decimal::new(9600, 0),
            signups: vec![1, 2],
            totals: [(
                Currency::USD,
                (
                    Decimal::new(1250, 2),
                    Decimal::new(5000, 2),
                    vec![(9, Decimal::ONE)],
                ),
            )]
            .into(),
            entries: 7,
            latest: None,
        };
        let bytes = postcard::to_extend(&v1, vec![POSTCARD_V1]).unwrap();
        let book: Book = decode_record(&bytes).unwrap();
        let usd = &book.totals[&Currency::USD];
        assert_eq!(usd.available, Decimal::new(1250, 2));
        assert_eq!(usd.paid, Decimal::new(5000, 2));
        assert_eq!(usd.held, vec![(9, Decimal::ONE)]);
        assert_eq!(usd.in_payout, Decimal::ZERO);
        assert_eq!((book.entries, book.signups.len()), (7, 2));
        let again: Book = decode_record(&encode_record(&book)).unwrap();
        assert_eq!(again, book);
    }
}
