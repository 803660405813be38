//! The simulator's only source of randomness: SplitMix64, seeded (STYLE principle 2).
//!
//! SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA
//! 2014) is small, fast, passes BigCrush, and every 64-bit seed is a good seed, so seeds printed
//! by a failing test can be any number. It is not for cryptography.

/// A seeded pseudo-random number generator. The same seed gives the same sequence on every
/// machine and every run.
///
/// # Examples
///
/// ```
/// use derecho::sim::SimRng;
///
/// let mut a = SimRng::new(7);
/// let mut b = SimRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.range(10..=20);
/// assert!((10..=20).contains(&x));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`, without modulo bias (Lemire's multiply-and-reject).
    ///
    /// # Panics
    ///
    /// If `n` is zero.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no value to return");
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// A number in `range` (both ends included).
    ///
    /// # Panics
    ///
    /// If the range is empty.
    pub fn range(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        let (lo, hi) = range.into_inner();
        assert!(lo <= hi, "empty range {lo}..={hi}");
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `num / den`.
    ///
    /// # Panics
    ///
    /// If `den` is zero or `num > den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        assert!(den > 0 && num <= den, "bad probability {num}/{den}");
        self.below(den) < num
    }

    /// `k` distinct numbers of `0..n`, in increasing order (a partial Fisher-Yates shuffle).
    ///
    /// # Panics
    ///
    /// If `k > n`.
    pub fn choose(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "cannot choose {k} of {n}");
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }

    /// An independent generator drawn from this one, so that one part of the simulation (the
    /// network, the workload) draws from its own stream and changing how often one part draws
    /// does not shift the other's numbers.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_sequence() {
        // The first outputs of Vigna's reference splitmix64.c for seed 1234567.
        let mut r = SimRng::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423]);
    }

    #[test]
    fn ranges_stay_in_bounds_and_reach_both_ends() {
        let mut r = SimRng::new(3);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let x = r.range(10..=14);
            assert!((10..=14).contains(&x), "{x}");
            seen[(x - 10) as usize] = true;
        }
        assert_eq!(seen, [true; 5]);
        assert_eq!(r.range(9..=9), 9);
        let _ = r.range(0..=u64::MAX);
    }

    #[test]
    fn choose_returns_distinct_sorted_indices() {
        let mut r = SimRng::new(11);
        for n in 1..8 {
            for k in 0..=n {
                let c = r.choose(n, k);
                assert_eq!(c.len(), k);
                assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?}");
                assert!(c.iter().all(|&i| i < n));
            }
        }
    }

    #[test]
    fn forks_are_independent_streams_and_chance_is_plausible() {
        let mut r = SimRng::new(5);
        let mut a = r.fork();
        let mut b = r.fork();
        assert_ne!(a.next_u64(), b.next_u64());
        let hits = (0..10_000).filter(|_| r.chance(1, 4)).count();
        assert!((2_000..3_000).contains(&hits), "{hits} of 10000 at p = 1/4");
        assert!(!r.chance(0, 1));
        assert!(r.chance(1, 1));
    }
}
