//! The records a book step writes, as the stores keep them: the format
//! byte each is written under, and the records as earlier versions wrote
//! them, read back as today's: the book before `in_payout` (byte 1) and
//! before `delays` (byte 2), the customer before its hold and the way its
//! click was found (byte 1).

use super::*;
use crate::conversions::customer::{ConversionCounts, Customer, PaymentEvent, RefundEvent};
use crate::ids::PartnerId;
use crate::store::record::{Record, POSTCARD_V1};

/// Byte 2: `CurrencyTotals` gained `in_payout`.
const BOOK_V2: u8 = 2;
/// Byte 3: `Book` gained `delays`.
const BOOK_V3: u8 = 3;
/// Byte 2: `Customer` gained `hold`, its `Referral` gained `found`.
const CUSTOMER_V2: u8 = 2;

impl Record for Book {
    const FORMAT: u8 = BOOK_V3;

    fn decode_earlier(format: u8, body: &[u8]) -> Option<Result<Self, postcard::Error>> {
        match format {
            POSTCARD_V1 => Some(postcard::from_bytes::<BookV1>(body).map(Book::from)),
            BOOK_V2 => Some(postcard::from_bytes::<BookV2>(body).map(Book::from)),
            _ => None,
        }
    }
}

impl Record for Customer {
    const FORMAT: u8 = CUSTOMER_V2;

    fn decode_earlier(format: u8, body: &[u8]) -> Option<Result<Self, postcard::Error>> {
        (format == POSTCARD_V1)
            .then(|| postcard::from_bytes::<CustomerV1>(body).map(Customer::from))
    }
}

impl Record for ConversionCounts {}

/// `Book` under format byte 2.
#[derive(Deserialize)]
struct BookV2 {
    arr: Decimal,
    signups: Vec<i64>,
    totals: BTreeMap<Currency, CurrencyTotals>,
    entries: u64,
    latest: Option<EventKey>,
}

impl From<BookV2> for Book {
    fn from(v2: BookV2) -> Book {
        Book {
            arr: v2.arr,
            signups: v2.signups,
            totals: v2.totals,
            entries: v2.entries,
            latest: v2.latest,
            delays: Vec::new(),
        }
    }
}

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
        Book::from(BookV2 {
            arr: v1.arr,
            signups: v1.signups,
            totals: totals.collect(),
            entries: v1.entries,
            latest: v1.latest,
        })
    }
}

/// `Customer` under format byte 1.
#[derive(Deserialize)]
struct CustomerV1 {
    id: String,
    referral: ReferralV1,
    signup: Option<Signup>,
    payments: Vec<PaymentEvent>,
    refunds: Vec<RefundEvent>,
    cancels: Vec<EventKey>,
    posted: BTreeMap<String, Decimal>,
    counts: ConversionCounts,
    arr_points: Vec<(EventKey, Decimal)>,
    arr_share: Decimal,
}

#[derive(Deserialize)]
struct ReferralV1 {
    partner: PartnerId,
    campaign: String,
    term: Option<String>,
    click_at: i64,
}

impl From<CustomerV1> for Customer {
    fn from(v1: CustomerV1) -> Customer {
        let r = v1.referral;
        Customer {
            id: v1.id,
            referral: Referral {
                partner: r.partner,
                campaign: r.campaign,
                term: r.term,
                click_at: r.click_at,
                found: None,
            },
            signup: v1.signup,
            payments: v1.payments,
            refunds: v1.refunds,
            cancels: v1.cancels,
            posted: v1.posted,
            counts: v1.counts,
            arr_points: v1.arr_points,
            arr_share: v1.arr_share,
            hold: None,
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

    #[derive(Serialize)]
    struct CustomerWrittenV1 {
        id: String,
        referral: (String, String, Option<String>, i64),
        signup: Option<Signup>,
        payments: Vec<PaymentEvent>,
        refunds: Vec<RefundEvent>,
        cancels: Vec<EventKey>,
        posted: BTreeMap<String, Decimal>,
        counts: ConversionCounts,
        arr_points: Vec<(EventKey, Decimal)>,
        arr_share: Decimal,
    }

    #[test]
    fn a_customer_written_before_holds_reads_back_unheld() {
        let v1 = CustomerWrittenV1 {
            id: "cus_1".into(),
            referral: (
                "p1".into(),
                "spring".into(),
                Some("t".into()),
                1_700_000_000,
            ),
            signup: None,
            payments: Vec::new(),
            refunds: Vec::new(),
            cancels: Vec::new(),
            posted: [("evt_1".to_owned(), Decimal::new(2000, 2))].into(),
            counts: ConversionCounts::default(),
            arr_points: Vec::new(),
            arr_share: Decimal::ZERO,
        };
        let bytes = postcard::to_extend(&v1, vec![POSTCARD_V1]).unwrap();
        let customer: Customer = decode_record(&bytes).unwrap();
        assert_eq!(customer.referral.campaign, "spring");
        assert_eq!(customer.referral.click_at, 1_700_000_000);
        assert_eq!((&customer.referral.found, &customer.hold), (&None, &None));
        assert_eq!(customer.posted["evt_1"], Decimal::new(2000, 2));
        let again: Customer = decode_record(&encode_record(&customer)).unwrap();
        assert_eq!(again, customer);
    }
}
