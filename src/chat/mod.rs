//! ChatML conversations, built exactly like Qwen's `make_context`: control tokens are inserted
//! by id and every role and content string is encoded as plain text, so a user who types
//! `<|im_end|>` cannot end their turn.
//!
//! - [`make_context`] / [`make_context_for`]: the prompt ids of one query after a history;
//! - [`decode_tokens`]: the reference's response extraction, quirks included;
//! - [`Conversation`] / [`ChatSession`]: a conversation over a [`Session`](crate::session::Session)
//!   that keeps its KV cache between turns;
//! - [`stop`]: stop strings matched across token boundaries, with streamed text held back so a
//!   stop string never leaks;
//! - [`tools`]: function calling in Qwen-1's ReAct and Qwen2.5's `<tool_call>` formats.

pub mod conversation;
pub mod stop;
pub mod tools;

pub use conversation::{ChatSession, Conversation, PendingTurn, Reply, DEFAULT_MAX_WINDOW_SIZE};
pub use stop::{generate_text, GenerateOptions, Generation, StopMatcher};
pub use tools::{
    ChatMessage, FinishKind, FunctionSpec, ParsedReply, Role, ToolCall, ToolChat, ToolFormat,
    ToolPrompt,
};

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

/// The prompt formats of Qwen's `make_context`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\ncontent<|im_end|>` turns (every Qwen chat model).
    #[default]
    ChatMl,
    /// The query as is (control-token text in it is parsed), for base models.
    Raw,
}

impl ChatFormat {
    pub fn parse(s: &str) -> Result<ChatFormat> {
        match s {
            "chatml" => Ok(ChatFormat::ChatMl),
            "raw" => Ok(ChatFormat::Raw),
            other => Err(Error::InvalidArgument(format!(
                "chat format `{other}` (expected `chatml` or `raw`)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => "chatml",
            ChatFormat::Raw => "raw",
        }
    }
}

/// Text of the context the way the reference's `raw_text` spells it: what the decoded context
/// reads like, and what [`decode_tokens`] cuts off the front of the decoded output.
pub fn raw_text(format: ChatFormat, system: &str, history: &[Turn], query: &str) -> String {
    match format {
        ChatFormat::Raw => query.to_string(),
        ChatFormat::ChatMl => {
            let mut s = format!("<|im_start|>system\n{system}<|im_end|>");
            for t in history {
                s.push_str(&format!(
                    "\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>",
                    t.user, t.assistant
                ));
            }
            s.push_str(&format!(
                "\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
            ));
            s
        }
    }
}

/// `make_context` for either format. For [`ChatFormat::Raw`] the context is `encode(query)` with
/// control-token text parsed (the reference's default `allowed_special="all"`), and the system
/// prompt and history are ignored, as in the reference.
pub fn make_context_for(
    tok: &Tokenizer,
    ct: &ChatTokens,
    format: ChatFormat,
    system: &str,
    history: &[Turn],
    query: &str,
    max_window_size: usize,
) -> Context {
    match format {
        ChatFormat::ChatMl => make_context(tok, ct, system, history, query, max_window_size),
        ChatFormat::Raw => Context {
            ids: tok.encode(query, EncodeMode::Trusted),
            turns_kept: 0,
        },
    }
}

/// The reference's `get_stop_words_ids`: for ChatML `[[im_end], [im_start]]`, for the raw format
/// `[encode("Human:"), [endoftext]]`.
pub fn stop_words_ids(tok: &Tokenizer, ct: &ChatTokens, format: ChatFormat) -> Vec<Vec<u32>> {
    match format {
        ChatFormat::ChatMl => vec![vec![ct.im_end], vec![ct.im_start]],
        ChatFormat::Raw => vec![tok.encode("Human:", EncodeMode::Text), vec![ct.endoftext]],
    }
}

/// What [`decode_tokens`] returns: the response and the reference's `end_reason` string
/// (`Gen '<|im_end|>'`, `Gen length 32`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub response: String,
    pub end_reason: String,
}

/// The reference's `decode_tokens(tokens, tokenizer, raw_text_len, context_length, chat_format)`,
/// quirks included. `tokens` is the context followed by the generated ids.
///
/// ChatML: the generated part is scanned for `<|im_start|>`/`<|im_end|>` only (`<|endoftext|>`
/// is decoded as text); the response is `decode(tokens[..stop])` minus the first
/// `raw_text.chars().count()` characters, stripped. When no stop id is found the reference's loop
/// variable ends on the last index, so **the last generated token is dropped**.
///
/// Raw: everything after `raw_text`, with every `<|endoftext|>` removed, stripped.
pub fn decode_tokens(
    tok: &Tokenizer,
    ct: &ChatTokens,
    format: ChatFormat,
    tokens: &[u32],
    context_len: usize,
    raw_text: &str,
) -> Decoded {
    let raw_chars = raw_text.chars().count();
    let after_raw = |s: &str| -> String { s.chars().skip(raw_chars).collect() };
    let mut end_reason = format!("Gen length {}", tokens.len());
    match format {
        ChatFormat::ChatMl => {
            let mut stop_idx = context_len;
            for (i, &t) in tokens.iter().enumerate().skip(context_len) {
                stop_idx = i;
                if t == ct.im_start || t == ct.im_end {
                    end_reason = format!("Gen '{}'", tok.decode(&[t]));
                    break;
                }
            }
            let text = tok.decode(&tokens[..stop_idx.min(tokens.len())]);
            Decoded {
                response: py_strip(&after_raw(&text)).to_string(),
                end_reason,
            }
        }
        ChatFormat::Raw => {
            let eod = tok.decode(&[ct.endoftext]);
            let text = after_raw(&tok.decode(tokens));
            let text = py_strip(&text.replace(&eod, "")).to_string();
            if text.contains(&eod) {
                end_reason = format!("Gen '{eod}'");
            }
            let text = text.split(eod.as_str()).next().unwrap_or_default();
            Decoded {
                response: py_strip(text).to_string(),
                end_reason,
            }
        }
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the ASCII separators U+001C..U+001F.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
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
