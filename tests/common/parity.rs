//! Comparing one backend's logits with another's on the same token stream.

use qwen::backend::Backend;
use qwen::model::forward::Batch;
use qwen::model::Model;

/// Largest |a - b| over the rows, relative to 1 + max |b|. Panics on a NaN or infinity (which
/// `f32::max` would otherwise skip).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().chain(b).all(|x| x.is_finite()),
        "logits not finite"
    );
    let scale = 1.0 + b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// One item of a token stream: `token` at the next position of sequence `seq`.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub seq: usize,
    pub token: u32,
}

/// Runs `items` through `b` in batches of up to `max_batch` (sequences mixed within a batch),
/// each sequence's RoPE frequencies fixed for a prompt of `ntk_len` tokens (Qwen-1's dynamic
/// NTK), and returns every item's logits. Teacher forcing: two backends compared this way see
/// the same tokens whatever their argmax.
pub fn logits_of(
    model: &Model,
    b: &mut dyn Backend,
    items: &[Item],
    ntk_len: usize,
) -> qwen::Result<Vec<Vec<f32>>> {
    let c = &model.config;
    let half = c.head_dim / 2;
    let n_seq = b.n_seq();
    let mut inv_freq = vec![0.0f32; n_seq * half];
    for s in 0..n_seq {
        c.rope_inv_freq(
            c.ntk_alpha(ntk_len),
            &mut inv_freq[s * half..(s + 1) * half],
        );
    }
    let v = c.n_vocab;
    let mut next_pos = vec![0usize; n_seq];
    let mut logits = vec![0.0f32; b.max_batch() * v];
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(b.max_batch()) {
        let tokens: Vec<u32> = chunk.iter().map(|i| i.token).collect();
        let seq: Vec<usize> = chunk.iter().map(|i| i.seq).collect();
        let pos: Vec<usize> = chunk
            .iter()
            .map(|i| {
                next_pos[i.seq] += 1;
                next_pos[i.seq] - 1
            })
            .collect();
        let batch = Batch {
            tokens: &tokens,
            seq: &seq,
            pos: &pos,
            logits_from: 0,
        };
        b.forward(model, &inv_freq, &batch, &mut logits)?;
        out.extend((0..chunk.len()).map(|t| logits[t * v..(t + 1) * v].to_vec()));
    }
    Ok(out)
}

/// A single sequence's items.
pub fn one_sequence(tokens: &[u32]) -> Vec<Item> {
    tokens.iter().map(|&token| Item { seq: 0, token }).collect()
}
