//! The token-bytes → id lookup of the BPE merges, built without an allocation per token: an
//! open-addressing table of ids whose keys are the tokens' bytes in the tokenizer's shared
//! buffer (a `HashMap<Vec<u8>, u32>` took ~150k small allocations and most of a model load).

use rustc_hash::FxHasher;
use std::hash::Hasher;

/// Ids of the normal tokens, placed by the hash of their bytes (linear probing, a load factor
/// of at most 3/4). A slot holds the key's hash in its high 32 bits (so most mismatches are
/// told apart without comparing bytes) and `id + 1` in its low 32 bits, 0 when empty.
pub(super) struct TokenIndex {
    slots: Vec<u64>,
    mask: usize,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.finish()
}

/// The slot value of `id` with hash `h`.
fn slot(h: u64, id: u32) -> u64 {
    (h & !0xFFFF_FFFF) | (id as u64 + 1)
}

impl TokenIndex {
    /// Indexes `ids` (in increasing order); `bytes_of(id)` gives a token's bytes. Where two ids
    /// have the same bytes, the first (lowest) one is kept.
    pub fn build<'a>(
        n: usize,
        ids: impl Iterator<Item = u32>,
        bytes_of: impl Fn(u32) -> &'a [u8],
    ) -> TokenIndex {
        let size = (n + n / 3 + 1).next_power_of_two().max(16);
        let mut index = TokenIndex {
            slots: vec![0; size],
            mask: size - 1,
        };
        for id in ids {
            let key = bytes_of(id);
            let h = hash(key);
            let mut i = (h as usize) & index.mask;
            loop {
                let s = index.slots[i];
                if s == 0 {
                    index.slots[i] = slot(h, id);
                    break;
                }
                if s >> 32 == h >> 32 && bytes_of((s as u32) - 1) == key {
                    break;
                }
                i = (i + 1) & index.mask;
            }
        }
        index
    }

    /// The id whose bytes are `key`.
    pub fn get<'a>(&self, key: &[u8], bytes_of: impl Fn(u32) -> &'a [u8]) -> Option<u32> {
        let h = hash(key);
        let mut i = (h as usize) & self.mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> 32 == h >> 32 && bytes_of((s as u32) - 1) == key {
                return Some((s as u32) - 1);
            }
            i = (i + 1) & self.mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_keeps_the_first_duplicate() {
        let words: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("w{}", i % 4000).into_bytes())
            .collect();
        let index = TokenIndex::build(words.len(), 0..words.len() as u32, |id| &words[id as usize]);
        for (id, w) in words.iter().enumerate() {
            let got = index.get(w, |id| &words[id as usize]).unwrap();
            assert_eq!(got as usize, id % 4000, "{}", String::from_utf8_lossy(w));
        }
        assert_eq!(index.get(b"nope", |id| &words[id as usize]), None);
        assert_eq!(index.get(b"", |id| &words[id as usize]), None);
    }
}
