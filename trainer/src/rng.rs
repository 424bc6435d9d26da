//! A small seeded generator (SplitMix64): reproducible initialisation and sampling without a dependency.

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: every seed gives one fixed stream.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Moves the stream on by `draws` draws at no cost: the state advances by a constant per draw.
    pub fn skip(&mut self, draws: u64) {
        self.0 = self.0.wrapping_add(draws.wrapping_mul(GOLDEN_GAMMA));
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0); the modulo bias is below 2^-40 for the sizes we draw from.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(f64::MIN_POSITIVE), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_roughly_standard() {
        let draw = |seed| {
            let mut rng = SplitMix::new(seed);
            (0..10_000).map(|_| rng.normal()).collect::<Vec<f64>>()
        };
        assert_eq!(draw(3), draw(3));
        let mut skipped = SplitMix::new(3);
        skipped.skip(10);
        let mut walked = SplitMix::new(3);
        (0..10).for_each(|_| {
            walked.next_u64();
        });
        assert_eq!(skipped.next_u64(), walked.next_u64());
        assert_ne!(draw(3), draw(4));
        let sample = draw(3);
        let mean = sample.iter().sum::<f64>() / sample.len() as f64;
        let var = sample.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / sample.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean}, variance {var}"
        );
    }
}
