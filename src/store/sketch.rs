//! Distinct visitors of a report cell. Up to 1,024 visitors, the sketch is
//! the exact set of their 64-bit hashes (8 bytes each, so most cells are
//! small and count exactly); past that, a HyperLogLog of 16,384 one-byte
//! registers (16 KiB a cell, whatever the traffic; 0.81 % standard error,
//! as Redis's PFADD gives, which the spec asks for). Either merges with the other (a union), so a report range's
//! unique visitors are the count of its cells' union.

use std::collections::HashSet;

use crate::ids::VisitorId;

/// Register index bits: 2^14 registers.
const BITS: u32 = 14;
const REGISTERS: usize = 1 << BITS;
/// Visitors kept exactly before the sketch turns into registers.
const EXACT_MAX: usize = 1_024;
/// The first byte of the stored form.
const EXACT_TAG: u8 = 0;
const REGISTERS_TAG: u8 = 1;

/// A cell's distinct visitors, as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Sketch {
    /// The visitors' hashes, while few. A hash set, not a B-tree: adding a
    /// visitor to its cell is done for every click the flusher writes (a
    /// B-tree set's insert was 3 % of `serve`'s CPU under `loadtest/run`).
    Exact(HashSet<u64, foldhash::fast::RandomState>),
    /// HyperLogLog registers.
    Registers(Box<[u8]>),
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::Exact(HashSet::default())
    }
}

/// Visitor ids end in random bytes, which serve as the hash.
fn hash(visitor: &VisitorId) -> u64 {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&visitor.0[8..]);
    u64::from_le_bytes(tail)
}

/// Sets the register `hash` falls in to its rank if higher.
fn register(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - BITS)) as usize;
    // The rank of the first set bit in the rest; a sentinel bit keeps it
    // within the register's range when the rest is all zeros.
    let rest = (hash << BITS) | (1 << (BITS - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if registers[index] < rank {
        registers[index] = rank;
    }
}

impl Sketch {
    /// The sketch stored as `bytes`; anything not a sketch reads as empty.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match bytes.split_first() {
            Some((&REGISTERS_TAG, registers)) if registers.len() == REGISTERS => {
                Sketch::Registers(registers.into())
            }
            Some((&EXACT_TAG, hashes)) if hashes.len() % 8 == 0 => Sketch::Exact(
                hashes
                    .chunks_exact(8)
                    .map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")))
                    .collect(),
            ),
            _ => Sketch::default(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Sketch::Exact(hashes) => {
                // In order, so that a sketch has one stored form.
                let mut sorted: Vec<u64> = hashes.iter().copied().collect();
                sorted.sort_unstable();
                std::iter::once(EXACT_TAG)
                    .chain(sorted.iter().flat_map(|h| h.to_le_bytes()))
                    .collect()
            }
            Sketch::Registers(registers) => std::iter::once(REGISTERS_TAG)
                .chain(registers.iter().copied())
                .collect(),
        }
    }

    /// About how many bytes of memory the sketch holds beyond its own size.
    pub fn memory(&self) -> usize {
        match self {
            // A hash set's table: 8 bytes and a control byte a slot.
            Sketch::Exact(hashes) => 9 * hashes.capacity(),
            Sketch::Registers(_) => REGISTERS,
        }
    }

    /// Counts a visitor.
    pub fn add(&mut self, visitor: &VisitorId) {
        self.add_hash(hash(visitor));
    }

    fn add_hash(&mut self, hash: u64) {
        match self {
            Sketch::Exact(hashes) => {
                hashes.insert(hash);
                if hashes.len() > EXACT_MAX {
                    self.grow_into_registers();
                }
            }
            Sketch::Registers(registers) => register(registers, hash),
        }
    }

    fn grow_into_registers(&mut self) {
        if let Sketch::Exact(hashes) = self {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            for hash in hashes.iter() {
                register(&mut registers, *hash);
            }
            *self = Sketch::Registers(registers);
        }
    }

    /// Makes this sketch count the union with `other`.
    pub fn merge(&mut self, other: &Sketch) {
        match other {
            Sketch::Exact(hashes) => {
                for hash in hashes {
                    self.add_hash(*hash);
                }
            }
            Sketch::Registers(theirs) => {
                self.grow_into_registers();
                if let Sketch::Registers(mine) = self {
                    for (mine, theirs) in mine.iter_mut().zip(theirs.iter()) {
                        *mine = (*mine).max(*theirs);
                    }
                }
            }
        }
    }

    /// The number of distinct visitors: exact while few, else estimated.
    pub fn count(&self) -> u64 {
        let registers = match self {
            Sketch::Exact(hashes) => return hashes.len() as u64,
            Sketch::Registers(registers) => registers,
        };
        let m = REGISTERS as f64;
        let zeros = registers.iter().filter(|r| **r == 0).count();
        let sum: f64 = registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Small counts: linear counting.
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
        let visitors: Vec<VisitorId> = (0..1_000).map(|_| VisitorId::random()).collect();
        for v in visitors.iter().chain(visitors.iter()) {
            sketch.add(v);
        }
        assert_eq!(sketch.count(), 1_000);
        assert_eq!(Sketch::from_bytes(&sketch.to_bytes()), sketch);
        assert_eq!(sketch.to_bytes().len(), 1 + 1_000 * 8);
        assert_eq!(Sketch::default().count(), 0);
    }

    #[test]
    fn memory_grows_with_hashes_and_stops_at_the_registers() {
        let mut sketch = Sketch::default();
        assert_eq!(sketch.memory(), 0);
        sketch.add(&VisitorId::random());
        let one = sketch.memory();
        assert!(one > 0);
        for _ in 0..EXACT_MAX {
            sketch.add(&VisitorId::random());
        }
        assert_eq!(sketch.memory(), REGISTERS, "registers from 1,025 visitors");
        sketch.add(&VisitorId::random());
        assert_eq!(sketch.memory(), REGISTERS);
    }

    #[test]
    fn large_counts_are_within_a_few_percent_and_unions_merge() {
        let (mut a, mut b, mut small) = (Sketch::default(), Sketch::default(), Sketch::default());
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
            if i < 100 {
                small.add(v);
            }
        }
        assert!(matches!(a, Sketch::Registers(_)));
        a.merge(&b);
        // An exact sketch merges into registers, and registers into one.
        a.merge(&small);
        small.merge(&b);
        let error = (a.count() as f64 - 20_000.0).abs() / 20_000.0;
        assert!(error < 0.03, "estimate {} off by {error}", a.count());
        let error = (small.count() as f64 - 12_040.0).abs() / 12_040.0;
        assert!(error < 0.03, "estimate {} off by {error}", small.count());
        assert_eq!(Sketch::from_bytes(&a.to_bytes()).count(), a.count());
        assert_eq!(Sketch::from_bytes(b"not a sketch").count(), 0);
    }
}
