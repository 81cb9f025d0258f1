//! Cross-cutting tests of the quant module: sizes, round trips, dot products, dispatch.

/// A tiny deterministic generator (xorshift32) so the tests need no `rand`.
pub(crate) struct XorShift(u32);

impl XorShift {
    pub fn new(seed: u32) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}
