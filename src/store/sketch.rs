//! Distinct visitors of a report cell as a HyperLogLog sketch: 4,096
//! one-byte registers (4 KiB a cell, whatever the traffic), a standard error
//! of about 1.6 %, exact in practice for small counts (linear counting), and
//! unions by taking each register's maximum, so a report range's unique
//! visitors are the estimate of its cells' union.

use crate::cookie::VisitorId;

/// Register index bits: 2^12 registers.
const BITS: u32 = 12;
const REGISTERS: usize = 1 << BITS;

/// A HyperLogLog sketch, as stored (its bytes are the registers).
#[derive(Clone, PartialEq, Eq)]
pub struct Sketch(Box<[u8]>);

impl Default for Sketch {
    fn default() -> Self {
        Sketch(vec![0; REGISTERS].into_boxed_slice())
    }
}

impl Sketch {
    /// The sketch stored as `bytes`; anything not a sketch reads as empty.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if bytes.len() == REGISTERS {
            Sketch(bytes.into())
        } else {
            Sketch::default()
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Counts a visitor. Visitor ids end in random bytes, which serve as
    /// the hash: the last eight pick the register and the rank.
    pub fn add(&mut self, visitor: &VisitorId) {
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&visitor.0[8..]);
        let hash = u64::from_le_bytes(tail);
        let index = (hash >> (64 - BITS)) as usize;
        // The rank of the first set bit in the rest; a sentinel bit keeps
        // it within the register's range when the rest is all zeros.
        let rest = (hash << BITS) | (1 << (BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if self.0[index] < rank {
            self.0[index] = rank;
        }
    }

    /// Makes this sketch count the union with `other`.
    pub fn merge(&mut self, other: &Sketch) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// The estimated number of distinct visitors.
    pub fn count(&self) -> u64 {
        let m = REGISTERS as f64;
        let zeros = self.0.iter().filter(|r| **r == 0).count();
        let sum: f64 = self.0.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Small counts: linear counting, nearly exact.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_are_exact_and_repeats_count_once() {
        let mut sketch = Sketch::default();
        let visitors: Vec<VisitorId> = (0..20).map(|_| VisitorId::random()).collect();
        for v in visitors.iter().chain(visitors.iter()) {
            sketch.add(v);
        }
        assert_eq!(sketch.count(), 20);
        assert_eq!(Sketch::default().count(), 0);
    }

    #[test]
    fn large_counts_are_within_a_few_percent_and_unions_merge() {
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        let shared: Vec<VisitorId> = (0..20_000).map(|_| VisitorId::random()).collect();
        for (i, v) in shared.iter().enumerate() {
            if i % 2 == 0 {
                a.add(v);
            } else {
                b.add(v);
            }
            // Every tenth visitor seen in both.
            if i % 10 == 0 {
                a.add(v);
                b.add(v);
            }
        }
        a.merge(&b);
        let error = (a.count() as f64 - 20_000.0).abs() / 20_000.0;
        assert!(error < 0.06, "estimate {} off by {error}", a.count());
        assert_eq!(Sketch::from_bytes(a.as_bytes()).count(), a.count());
        assert_eq!(Sketch::from_bytes(b"not a sketch").count(), 0);
    }
}
