//! Stop strings and streamed text.
//!
//! A stop string can start in one token and end in a later one (`"Observation:"` is three
//! tokens), so text is only handed to the caller once it can no longer become part of a stop
//! string: the longest tail of the pending text that is a prefix of some stop string is held
//! back until the next token decides it. `openai_api.py` holds back a fixed number of characters
//! for the same reason; holding back only a real prefix gives the same guarantee (a stop string
//! never reaches the stream) with less delay.

use crate::error::Result;
use crate::sampler::Sampler;
use crate::session::{FinishReason, Session};
use crate::tokenizer::StreamDecoder;

/// Finds the first stop string in streamed text and holds back what might begin one.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new<S: AsRef<str>>(stops: &[S]) -> StopMatcher {
        let stops: Vec<String> = stops
            .iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher {
            stops,
            pending: String::with_capacity(4 * longest + 64),
            matched: None,
        }
    }

    /// The stop string that matched, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Adds `piece` and appends to `out` the text that is now certain not to be part of a stop
    /// string. Returns true when a stop string was found: `out` then ends just before it and
    /// everything after it is dropped.
    pub fn push(&mut self, piece: &str, out: &mut String) -> bool {
        if self.matched.is_some() {
            return true;
        }
        self.pending.push_str(piece);
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = first {
            out.push_str(&self.pending[..at]);
            self.pending.clear();
            self.matched = Some(i);
            return true;
        }
        let keep = self.held_back_len();
        let emit = self.pending.len() - keep;
        out.push_str(&self.pending[..emit]);
        self.pending.drain(..emit);
        false
    }

    /// Length of the longest tail of the pending text that is a proper prefix of a stop string.
    /// A prefix of a valid string starts with a character's first byte, so the tail starts on a
    /// character boundary of `pending`.
    fn held_back_len(&self) -> usize {
        let mut keep = 0;
        for s in &self.stops {
            for k in (keep + 1..s.len().min(self.pending.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.pending.ends_with(&s[..k]) {
                    keep = k;
                    break;
                }
            }
        }
        keep
    }

    /// Appends the held-back text (generation ended without completing a stop string).
    pub fn finish(&mut self, out: &mut String) {
        if self.matched.is_none() {
            out.push_str(&self.pending);
        }
        self.pending.clear();
    }
}

/// What ends a [`generate_text`] call besides `max_tokens` and the context length.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most tokens to sample.
    pub max_tokens: usize,
    /// Token ids that end the generation (ChatML's `<|im_end|>` ...). They are not part of the text.
    pub stop_tokens: Vec<u32>,
    /// Strings that end the generation; the text stops just before the first one.
    pub stop_strings: Vec<String>,
}

/// The outcome of [`generate_text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Every sampled id, a final stop token included.
    pub token_ids: Vec<u32>,
    /// The text handed to the callback, in full (before any stop string or stop token).
    pub text: String,
    /// `Stop` for a stop token or stop string, `Length` for the token limit or a full context,
    /// `Cancelled` when the callback asked to stop.
    pub finish_reason: FinishReason,
    /// The stop string that ended the generation, if one did.
    pub stop_string: Option<String>,
}

/// Samples after whatever the session holds (the caller has evaluated the prompt), decoding
/// tokens to text as they come. `on_text` receives each piece of text once it is certain: whole
/// UTF-8 characters, never any part of a stop string. Returning false cancels the generation.
pub fn generate_text(
    session: &mut Session,
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let model = std::sync::Arc::clone(session.model());
    let tok = model.tokenizer()?;
    let mut decoder = StreamDecoder::new();
    let mut matcher = StopMatcher::new(&opts.stop_strings);
    let mut piece = String::with_capacity(64);
    let mut emit = String::with_capacity(64);
    let mut text = String::new();
    let mut cancelled = false;
    let mut stopped_by_string = false;
    let (token_ids, reason) =
        session.generate(sampler, opts.max_tokens, &opts.stop_tokens, |id| {
            piece.clear();
            emit.clear();
            decoder.push_into(tok, id, &mut piece);
            stopped_by_string = matcher.push(&piece, &mut emit);
            if !emit.is_empty() {
                text.push_str(&emit);
                if !on_text(&emit) {
                    cancelled = true;
                    return false;
                }
            }
            !stopped_by_string
        })?;
    let finish_reason = if cancelled {
        FinishReason::Cancelled
    } else {
        if !stopped_by_string {
            // A stop token or the length limit: flush what was held back.
            emit.clear();
            let rest = decoder.finish();
            matcher.push(&rest, &mut emit);
            matcher.finish(&mut emit);
            if !emit.is_empty() {
                text.push_str(&emit);
                if !on_text(&emit) {
                    cancelled = true;
                }
            }
        }
        if cancelled {
            FinishReason::Cancelled
        } else {
            reason
        }
    };
    Ok(Generation {
        token_ids,
        text,
        finish_reason,
        stop_string: matcher.matched().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds pieces and returns (every emitted chunk, stopped).
    fn feed(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops);
        let mut chunks = Vec::new();
        for p in pieces {
            let mut out = String::new();
            let stopped = m.push(p, &mut out);
            chunks.push(out);
            if stopped {
                return (chunks, true);
            }
        }
        let mut out = String::new();
        m.finish(&mut out);
        chunks.push(out);
        (chunks, false)
    }

    #[test]
    fn stop_string_across_pieces_never_leaks() {
        let (chunks, stopped) = feed(
            &["Observation:"],
            &["Action: x\n", "Obs", "erv", "ation", ": 42"],
        );
        assert!(stopped);
        assert_eq!(chunks, ["Action: x\n", "", "", "", ""]);
        assert!(!chunks.concat().contains("Obs"));
    }

    #[test]
    fn a_false_start_is_released() {
        let (chunks, stopped) = feed(&["STOP"], &["ST", "OP?", "no"]);
        assert!(stopped);
        assert_eq!(chunks.concat(), "");
        let (chunks, stopped) = feed(&["STOP"], &["a ST", "ill", " S"]);
        assert!(!stopped);
        assert_eq!(chunks, ["a ", "STill", " ", "S"]);
    }

    #[test]
    fn earliest_stop_wins_and_text_after_is_dropped() {
        let (chunks, stopped) = feed(&["bc", "ab"], &["xabcd"]);
        assert!(stopped);
        assert_eq!(chunks, ["x"]);
    }

    #[test]
    fn multibyte_prefixes() {
        // "你好" is held back while it may still become "你好吗".
        let (chunks, stopped) = feed(&["你好吗"], &["说你", "好", "呀"]);
        assert!(!stopped);
        assert_eq!(chunks, ["说", "", "你好呀", ""]);
    }
}
