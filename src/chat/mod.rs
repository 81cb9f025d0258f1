//! ChatML conversations, built exactly like Qwen's `make_context`: control tokens are inserted
//! by id and every role and content string is encoded as plain text, so a user who types
//! `<|im_end|>` cannot end their turn.

use crate::error::{Error, Result};
use crate::tokenizer::{EncodeMode, Tokenizer};

pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// The ids of the ChatML control tokens, read from the tokenizer (never hard-coded).
#[derive(Clone, Copy, Debug)]
pub struct ChatTokens {
    pub im_start: u32,
    pub im_end: u32,
    pub endoftext: u32,
}

impl ChatTokens {
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<ChatTokens> {
        let id = |s: &str| {
            tok.special_id(s)
                .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no `{s}` token")))
        };
        Ok(ChatTokens {
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            endoftext: id("<|endoftext|>")?,
        })
    }

    /// Tokens that end an assistant turn.
    pub fn stop_tokens(&self) -> [u32; 3] {
        [self.im_end, self.im_start, self.endoftext]
    }
}

/// One finished exchange of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
}

/// The token ids of a ChatML context, with how many history turns survived the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub ids: Vec<u32>,
    pub turns_kept: usize,
}

/// Builds the context ids for `query` after `history` under `system`, keeping the newest turns
/// that fit strictly below `max_window_size` tokens (the reference's `<`), like `make_context`.
/// The system prompt and the query are never dropped.
pub fn make_context(
    tok: &Tokenizer,
    ct: &ChatTokens,
    system: &str,
    history: &[Turn],
    query: &str,
    max_window_size: usize,
) -> Context {
    let nl = tok.encode("\n", EncodeMode::Text);
    let role_content = |role: &str, content: &str| -> Vec<u32> {
        let mut v = tok.encode(role, EncodeMode::Text);
        v.extend_from_slice(&nl);
        v.extend(tok.encode(content, EncodeMode::Text));
        v
    };
    let message = |role: &str, content: &str| -> Vec<u32> {
        let mut v = vec![ct.im_start];
        v.extend(role_content(role, content));
        v.push(ct.im_end);
        v
    };
    let system_tokens = message("system", system);
    let mut kept: Vec<Vec<u32>> = Vec::new();
    let mut kept_len = 0;
    for turn in history.iter().rev() {
        let mut t = nl.clone();
        t.extend(message("user", &turn.user));
        t.extend_from_slice(&nl);
        t.extend(message("assistant", &turn.assistant));
        if system_tokens.len() + t.len() + kept_len < max_window_size {
            kept_len += t.len();
            kept.push(t);
        } else {
            break;
        }
    }
    let mut ids = system_tokens;
    for t in kept.iter().rev() {
        ids.extend_from_slice(t);
    }
    ids.extend_from_slice(&nl);
    ids.extend(message("user", query));
    ids.extend_from_slice(&nl);
    ids.push(ct.im_start);
    ids.extend(tok.encode("assistant", EncodeMode::Text));
    ids.extend_from_slice(&nl);
    Context {
        ids,
        turns_kept: kept.len(),
    }
}
