//! Perplexity with llama.cpp's method (`tools/perplexity`), so numbers compare with
//! `llama-perplexity`: the text is tokenized once (control-token text is plain text), cut into
//! `n_chunk = tokens / n_ctx` non-overlapping windows of `n_ctx` tokens (the tail is dropped),
//! each window is evaluated on an empty cache, and only its second half is scored: the logits at
//! positions `n_ctx/2 .. n_ctx-2` predict the tokens after them (`n_ctx - n_ctx/2 - 1` per window).
//! When the vocabulary asks for a BOS token (`tokenizer.ggml.add_bos_token`), the first token of
//! every window is replaced by it, as llama.cpp does; Qwen files do not ask for one.
//! `ppl = exp(mean NLL)`, the ± is llama.cpp's standard error of that estimate.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::session::Session;

/// The result of [`perplexity`].
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of `ppl` (llama.cpp's `±`).
    pub ppl_stderr: f64,
    /// Windows evaluated.
    pub chunks: usize,
    /// Window length.
    pub n_ctx: usize,
    /// Tokens scored in all.
    pub n_scored: usize,
    /// The running perplexity after each window (llama.cpp prints these as `[i]ppl`).
    pub running: Vec<f64>,
}

/// The id llama.cpp would put at the start of each window: the BOS id when the file sets
/// `tokenizer.ggml.add_bos_token` to true, otherwise `None`.
pub fn bos_for_perplexity(model: &Model) -> Result<Option<u32>> {
    let f = model.file();
    if f.get_opt_bool("tokenizer.ggml.add_bos_token")? != Some(true) {
        return Ok(None);
    }
    f.get_opt_u32("tokenizer.ggml.bos_token_id")
}

/// `-log softmax(logits)[target]`, with llama.cpp's arithmetic: f32 max, f64 sum of `exp`.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| (x - max).exp() as f64).sum();
    -((logits[target as usize] - max) as f64 - sum.ln())
}

/// Perplexity of `tokens` in windows of the session's context length. `on_chunk(i, n, ppl)`
/// sees the running value after window `i` of `n`. The session is reset first and after.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    let n_ctx = session.n_ctx();
    if n_ctx < 4 {
        return Err(Error::InvalidArgument(format!(
            "a perplexity window of {n_ctx} tokens is too short"
        )));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(Error::InvalidArgument(format!(
            "perplexity with a context of {n_ctx} needs at least {} tokens; the text has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let n_chunk = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let mut window = vec![0u32; n_ctx];
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunk);
    for i in 0..n_chunk {
        window.copy_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
        if let Some(b) = bos {
            window[0] = b;
        }
        session.reset();
        // Logits at position j predict the token at j + 1; the original tokens are the targets.
        let targets = &tokens[i * n_ctx..(i + 1) * n_ctx];
        session.eval_with_logits(&window, first, |j, row| {
            if j + 1 < n_ctx {
                let v = nll(row, targets[j + 1]);
                sum += v;
                sum2 += v * v;
                count += 1;
            }
        })?;
        let ppl = (sum / count as f64).exp();
        running.push(ppl);
        on_chunk(i, n_chunk, ppl);
    }
    session.reset();
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let ppl_stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        ppl_stderr,
        chunks: n_chunk,
        n_ctx,
        n_scored: count,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::nll;

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            let want = -((logits[t] as f64).exp() / z).ln();
            assert!((nll(&logits, t as u32) - want).abs() < 1e-6);
        }
    }
}
