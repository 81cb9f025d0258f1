//! Byte-pair encoding of one pre-token, with tiktoken's rule: repeatedly merge the adjacent pair
//! whose concatenation has the lowest rank, the leftmost one on ties, until no pair is a token.
//!
//! tiktoken rescans all pairs after each merge (quadratic in the piece length). A min-heap keyed
//! by (rank, position) makes the same choices in O(n log n), so a long run without splits (a user
//! pasting 100k identical letters) cannot stall the encoder.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Token bytes → rank (= id).
pub trait Ranks {
    fn rank(&self, bytes: &[u8]) -> Option<u32>;
}

impl Ranks for rustc_hash::FxHashMap<Vec<u8>, u32> {
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        self.get(bytes).copied()
    }
}

/// One current part of the piece: bytes `start..end` of the piece, linked to its neighbours.
#[derive(Clone, Copy)]
struct Part {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
    rank: u32,
}

/// A candidate merge of part `left` with its right neighbour, valid while they still span
/// `left.start..end` (parts only grow, so a changed span means the entry is stale).
type Candidate = Reverse<(u32, usize, usize)>;

/// Appends the token ids of `piece` to `out`. Every single byte must have a rank
/// (`byte_ranks`), which the tokenizer constructors guarantee.
pub fn encode_piece(
    piece: &[u8],
    encoder: &impl Ranks,
    byte_ranks: &[u32; 256],
    out: &mut Vec<u32>,
) {
    let mut parts: Vec<Part> = piece
        .iter()
        .enumerate()
        .map(|(i, &b)| Part {
            start: i,
            end: i + 1,
            prev: i.checked_sub(1),
            next: Some(i + 1).filter(|&n| n < piece.len()),
            rank: byte_ranks[b as usize],
        })
        .collect();
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(piece.len());
    for i in 0..parts.len().saturating_sub(1) {
        push_candidate(&parts, i, piece, encoder, &mut heap);
    }
    while let Some(Reverse((rank, left, end))) = heap.pop() {
        let Some(right) = parts[left].next else {
            continue;
        };
        if parts[right].end != end || parts[left].start == usize::MAX {
            continue; // stale: one side already merged into something else
        }
        merge(&mut parts, left, right, rank);
        if let Some(prev) = parts[left].prev {
            push_candidate(&parts, prev, piece, encoder, &mut heap);
        }
        push_candidate(&parts, left, piece, encoder, &mut heap);
    }
    let mut cur = Some(0).filter(|_| !parts.is_empty());
    while let Some(i) = cur {
        out.push(parts[i].rank);
        cur = parts[i].next;
    }
}

/// Queues the pair (`left`, its right neighbour) if their concatenation is a token.
fn push_candidate(
    parts: &[Part],
    left: usize,
    piece: &[u8],
    encoder: &impl Ranks,
    heap: &mut BinaryHeap<Candidate>,
) {
    let Some(right) = parts[left].next else {
        return;
    };
    let (start, end) = (parts[left].start, parts[right].end);
    if let Some(rank) = encoder.rank(&piece[start..end]) {
        heap.push(Reverse((rank, start, end)));
    }
}

/// Folds `right` into `left`; `right` is unlinked and marked dead with `start = usize::MAX`.
fn merge(parts: &mut [Part], left: usize, right: usize, rank: u32) {
    let after = parts[right].next;
    parts[left].end = parts[right].end;
    parts[left].next = after;
    parts[left].rank = rank;
    if let Some(a) = after {
        parts[a].prev = Some(left);
    }
    parts[right].start = usize::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    fn vocab(tokens: &[&[u8]]) -> (FxHashMap<Vec<u8>, u32>, [u32; 256]) {
        let mut enc = FxHashMap::default();
        let mut byte_ranks = [0; 256];
        for b in 0..=255u8 {
            enc.insert(vec![b], b as u32);
            byte_ranks[b as usize] = b as u32;
        }
        for (i, t) in tokens.iter().enumerate() {
            enc.insert(t.to_vec(), 256 + i as u32);
        }
        (enc, byte_ranks)
    }

    fn encode(piece: &[u8], tokens: &[&[u8]]) -> Vec<u32> {
        let (enc, byte_ranks) = vocab(tokens);
        let mut out = Vec::new();
        encode_piece(piece, &enc, &byte_ranks, &mut out);
        out
    }

    #[test]
    fn lowest_rank_merges_first() {
        // "bc" (256) outranks "ab" (257), so "abc" becomes a + bc, then abc if that is a token.
        assert_eq!(encode(b"abc", &[b"bc", b"ab"]), vec![b'a' as u32, 256]);
        assert_eq!(encode(b"abc", &[b"bc", b"ab", b"abc"]), vec![258]);
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        assert_eq!(encode(b"aaa", &[b"aa"]), vec![256, b'a' as u32]);
        assert_eq!(encode(b"aaaa", &[b"aa", b"aaaa"]), vec![257]);
    }

    #[test]
    fn empty_and_single_byte() {
        assert_eq!(encode(b"", &[]), Vec::<u32>::new());
        assert_eq!(encode(b"z", &[]), vec![b'z' as u32]);
    }
}
