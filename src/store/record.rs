//! The stored form of the records the worker rewrites at every book step
//! (books, customers, report cells), in both stores: a compact binary
//! encoding, read back alongside the JSON that earlier versions wrote.
//!
//! A customer's record is rewritten each time one of its events is
//! applied, so its encoding is on the worker's path: as JSON it was about a
//! tenth of the embedded worker's CPU (encoding and decoding field names,
//! numbers and decimals) and twice the bytes written. A record is now one
//! format byte, then the record in `postcard` (fields in declaration order,
//! no names). A record that starts with `{` is JSON from an earlier version
//! and is still read; it is written in the binary form when next changed,
//! so nothing converts a store.
//!
//! The binary form has no field names, so a change to one of these types
//! (a field added, removed or reordered) needs a new format byte, with the
//! old decoder kept beside it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The format byte of `postcard` records as first written.
pub const POSTCARD_V1: u8 = 1;

/// A type stored in the binary form: the format byte it is written under,
/// and how a record of an earlier byte reads back as it.
pub trait Record: Serialize + DeserializeOwned {
    /// The byte its current fields are written under.
    const FORMAT: u8 = POSTCARD_V1;

    /// A record written under `format`, an earlier byte than `FORMAT`, as
    /// this type; `None` for a byte it never had.
    fn decode_earlier(format: u8, body: &[u8]) -> Option<Result<Self, postcard::Error>> {
        let _ = (format, body);
        None
    }
}

/// `value` in its stored form.
pub fn encode_record<T: Record>(value: &T) -> Vec<u8> {
    // Serializing to a growable buffer fails only for what postcard cannot
    // express (maps of unknown length, untagged or flattened fields): none
    // of the types stored this way.
    postcard::to_extend(value, vec![T::FORMAT]).expect("stored records serialize to postcard")
}

/// A stored record, or an error naming what is wrong with its bytes.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::corrupt("binary record", e);
    match bytes.split_first() {
        Some((&format, body)) if format == T::FORMAT => {
            postcard::from_bytes(body).map_err(|e| corrupt(&e))
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| corrupt(&e)),
        Some((&format, body)) => match T::decode_earlier(format, body) {
            Some(decoded) => decoded.map_err(|e| corrupt(&e)),
            None => Err(corrupt(&format_args!("unknown format byte {format}"))),
        },
        None => Err(corrupt(&"empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversions::customer::ConversionCounts;
    use rust_decimal::Decimal;

    #[test]
    fn a_record_reads_back_from_its_binary_form_and_from_older_json() {
        let mut counts = ConversionCounts {
            signups: 3,
            customers: 2,
            ..ConversionCounts::default()
        };
        counts
            .revenue
            .insert("EUR".parse().unwrap(), Decimal::new(123_456, 2));
        let binary = encode_record(&counts);
        assert_eq!(decode_record::<ConversionCounts>(&binary).unwrap(), counts);
        let json = serde_json::to_vec(&counts).unwrap();
        assert_eq!(decode_record::<ConversionCounts>(&json).unwrap(), counts);
    }

    #[test]
    fn damaged_bytes_are_an_error_naming_the_record_never_a_panic() {
        let good = encode_record(&ConversionCounts::default());
        for bad in [
            vec![],
            vec![9, 1, 2],
            good[..good.len() - 1].to_vec(),
            b"{\"sig".to_vec(),
        ] {
            let err = decode_record::<ConversionCounts>(&bad).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
    }
}
