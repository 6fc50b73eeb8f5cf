//! Randomness as an argument: the OS source in production, a seeded generator in tests.
//!
//! Challenges, order ids and transaction ids come from an [`Entropy`] the caller passes in,
//! so a randomized simulation can replay exactly the same run from its seed.

use rand_xoshiro::SplitMix64;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

/// A source of random bytes.
pub trait Entropy: Send + std::fmt::Debug {
    /// Fills `buf`.
    fn fill(&mut self, buf: &mut [u8]);

    /// 16 random bytes.
    fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b
    }
}

/// The operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        qrcash_protocol::ids::random_bytes(buf);
    }
}

/// A deterministic generator (`rand_xoshiro`'s SplitMix64) for tests and simulations. Not
/// for production: its output is predictable from the seed.
#[derive(Debug, Clone)]
pub struct SeededEntropy(SplitMix64);

impl SeededEntropy {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededEntropy(SplitMix64::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_repeats_from_its_seed_and_differs_across_seeds() {
        let (mut a, mut b, mut c) = (
            SeededEntropy::new(7),
            SeededEntropy::new(7),
            SeededEntropy::new(8),
        );
        assert_eq!(a.bytes16(), b.bytes16());
        assert_ne!(a.bytes16(), c.bytes16());
        let mut os = OsEntropy;
        assert_ne!(os.bytes16(), os.bytes16());
        assert!((0..100).all(|_| a.below(3) < 3));
    }

    #[test]
    fn seeded_entropy_is_the_reference_splitmix64_so_old_seeds_replay() {
        // The first outputs of SplitMix64 from seed 0 (Vigna's reference implementation):
        // fault-campaign seeds and corpora recorded before the generator came from a crate
        // still produce the same runs.
        let mut r = SeededEntropy::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
