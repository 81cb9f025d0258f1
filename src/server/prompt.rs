//! Chat messages → prompt token ids, through the ChatML machinery of [`crate::chat`]: control
//! tokens by id, every role and content string encoded as plain text, so a user who types
//! `<|im_end|>` cannot end their turn.

use super::api::{ApiError, ChatCompletionRequest};
use crate::chat::{make_context, ChatTokens, Turn, DEFAULT_SYSTEM_PROMPT};
use crate::tokenizer::Tokenizer;

/// What a chat request runs: the prompt and what ends its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    pub stop_tokens: Vec<u32>,
    /// Stop strings the prompt format needs (the request's own come on top).
    pub stop_strings: Vec<String>,
}

/// Builds the ChatML prompt of a plain chat: an optional leading system message, then user and
/// assistant turns in alternation, ending with a user turn (the shape `make_context` takes).
pub fn chat_prompt(
    tok: &Tokenizer,
    ct: &ChatTokens,
    req: &ChatCompletionRequest,
) -> Result<ChatPrompt, ApiError> {
    let mut msgs = req.messages.as_slice();
    let mut system = DEFAULT_SYSTEM_PROMPT.to_string();
    if let Some(first) = msgs.first().filter(|m| m.role == "system") {
        system = first.text()?;
        msgs = &msgs[1..];
    }
    let Some((last, before)) = msgs.split_last() else {
        return Err(ApiError::param(
            "messages",
            "there is no user message after the system message",
        ));
    };
    if last.role != "user" {
        return Err(ApiError::param(
            "messages",
            format!(
                "the last message must come from the user, not `{}`",
                last.role
            ),
        ));
    }
    if before.len() % 2 != 0 {
        return Err(ApiError::param(
            "messages",
            "expected user and assistant messages in alternation before the last user message",
        ));
    }
    let mut history = Vec::with_capacity(before.len() / 2);
    for (k, pair) in before.chunks(2).enumerate() {
        if pair[0].role != "user" || pair[1].role != "assistant" {
            return Err(ApiError::param(
                "messages",
                format!(
                    "messages {} and {} should be a user message and the assistant's answer, \
                     found `{}` and `{}`",
                    2 * k + 1,
                    2 * k + 2,
                    pair[0].role,
                    pair[1].role
                ),
            ));
        }
        history.push(Turn {
            user: pair[0].text()?,
            assistant: pair[1].text()?,
        });
    }
    let ctx = make_context(tok, ct, &system, &history, &last.text()?, usize::MAX);
    Ok(ChatPrompt {
        ids: ctx.ids,
        stop_tokens: ct.stop_tokens().to_vec(),
        stop_strings: Vec::new(),
    })
}
