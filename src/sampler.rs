//! Token sampling with the semantics of Hugging Face `generate()` as Qwen uses it:
//! repetition penalty on the raw logits, then temperature, top-k, top-p, then a draw from the
//! softmax with a seeded generator. `temperature == 0` means greedy (argmax, first index on ties,
//! like `torch.argmax`).

/// Sampling parameters. The defaults are greedy decoding without penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1.0 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// HF `repetition_penalty` (1.0 = off): logits of tokens already seen are divided by it when
    /// positive and multiplied when negative.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A small, fast, seedable generator (SplitMix64 seeding a xoshiro256**). Implemented here so a
/// seed gives the same stream on every platform and crate version.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The generator's state, to save it (see [`from_state`](Self::from_state)).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// A generator that continues from a saved [`state`](Self::state); `None` for the all-zero
    /// state, which no seed produces and which would only ever yield zeros.
    pub fn from_state(s: [u64; 4]) -> Option<Rng> {
        (s != [0; 4]).then_some(Rng { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Index of the largest value; the first one on ties (like `torch.argmax`). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// A sampler owns its random state and the scratch it needs, so sampling allocates nothing
/// after the first call.
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    candidates: Vec<(f32, u32)>,
    seen: Vec<bool>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// The random generator (its state advances with every non-greedy draw).
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    /// A sampler with `params` whose draws continue from `rng` (a restored session's), instead
    /// of starting from `params.seed`.
    pub fn with_rng(params: SamplingParams, rng: Rng) -> Self {
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Picks the next token. `history` is every token so far (prompt and generated), which is
    /// what HF's repetition penalty looks at. `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repetition_penalty(logits, history);
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| (v * inv_t, i as u32)),
        );
        if self.candidates.is_empty() {
            return argmax(logits);
        }
        // Highest logit first; ties by lower id so the order (and the draw) is deterministic.
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        // Softmax over the survivors (in place: the f32 becomes a probability).
        let max = self.candidates[0].0;
        let mut sum = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.0 = (c.0 - max).exp();
            sum += c.0 as f64;
        }
        for c in self.candidates.iter_mut() {
            c.0 = (c.0 as f64 / sum) as f32;
        }
        // HF top-p: drop the tail whose cumulative probability (from the least likely end) is
        // <= 1 - top_p; the most likely token always stays.
        if self.params.top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = self.candidates.len();
            let threshold = 1.0 - self.params.top_p as f64;
            for (i, c) in self.candidates.iter().enumerate().rev() {
                cum += c.0 as f64;
                if cum > threshold {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        let total: f64 = self.candidates.iter().map(|c| c.0 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= c.0 as f64;
            if r < 0.0 {
                return c.1;
            }
        }
        self.candidates.last().map(|c| c.1).unwrap_or(0)
    }

    fn apply_repetition_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 || penalty <= 0.0 {
            return;
        }
        self.seen.clear();
        self.seen.resize(logits.len(), false);
        for &t in history {
            let t = t as usize;
            if t < logits.len() && !self.seen[t] {
                self.seen[t] = true;
                let v = logits[t];
                logits[t] = if v < 0.0 { v * penalty } else { v / penalty };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        let mut logits = [4.0, -1.0, 3.0];
        // Token 0 seen twice: penalised once. Token 1 negative: multiplied.
        let t = s.sample(&mut logits, &[0, 0, 1]);
        assert_eq!(logits, [2.0, -2.0, 3.0]);
        assert_eq!(t, 2);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.5,
            top_k: 1,
            seed: 7,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.1, 0.2, 5.0, 0.3], &[]), 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 1,
            ..Default::default()
        });
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > 300, "{counts:?}");
    }

    #[test]
    fn same_seed_same_stream() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 0.9,
                top_p: 0.95,
                seed,
                ..Default::default()
            });
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn a_restored_generator_continues_the_stream() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 13) % 7) as f32 * 0.4).collect();
        let params = SamplingParams {
            temperature: 1.0,
            seed: 9,
            ..Default::default()
        };
        let mut a = Sampler::new(params.clone());
        for _ in 0..5 {
            a.sample(&mut logits.clone(), &[]);
        }
        let rng = Rng::from_state(a.rng().state()).unwrap();
        let mut b = Sampler::with_rng(params, rng);
        for _ in 0..20 {
            assert_eq!(
                a.sample(&mut logits.clone(), &[]),
                b.sample(&mut logits.clone(), &[])
            );
        }
        assert!(Rng::from_state([0; 4]).is_none());
    }

    #[test]
    fn temperature_flattens() {
        let logits = [2.0f32, 0.0];
        let count_hot = |temp| {
            let mut s = Sampler::new(SamplingParams {
                temperature: temp,
                seed: 3,
                ..Default::default()
            });
            (0..4000)
                .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
                .count()
        };
        let cold = count_hot(0.5);
        let hot = count_hot(4.0);
        // p(1) = 1/(1+e^4) ~ 0.018 at T=0.5, 1/(1+e^0.5) ~ 0.38 at T=4.
        assert!(cold < 200 && hot > 1200, "cold {cold} hot {hot}");
    }
}
