//! A conversation (system prompt, finished turns, window) and a chat session that answers its
//! turns on one [`Session`], keeping the KV cache of the conversation between turns so a turn
//! costs the tokens it adds.

use super::{
    decode_tokens, make_context_for, py_strip, raw_text, stop::generate_text, ChatFormat,
    ChatTokens, Context, GenerateOptions, Turn, DEFAULT_SYSTEM_PROMPT,
};
use crate::error::{Error, Result};
use crate::sampler::Sampler;
use crate::session::{FinishReason, Session};
use crate::tokenizer::Tokenizer;

/// Qwen's `generation_config.json` default for `max_window_size`.
pub const DEFAULT_MAX_WINDOW_SIZE: usize = 6144;

/// The state `model.chat()` takes as arguments: system prompt, history and window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub system: String,
    pub history: Vec<Turn>,
    /// History turns are kept, newest first, while the context stays strictly below this many
    /// tokens (the reference's `<`); the system prompt and the query are always kept.
    pub max_window_size: usize,
    pub format: ChatFormat,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation::new(DEFAULT_SYSTEM_PROMPT)
    }
}

impl Conversation {
    pub fn new(system: impl Into<String>) -> Conversation {
        Conversation {
            system: system.into(),
            history: Vec::new(),
            max_window_size: DEFAULT_MAX_WINDOW_SIZE,
            format: ChatFormat::ChatMl,
        }
    }

    /// Parses the reference's history shape, `[["user", "assistant"], ...]`.
    pub fn history_from_json(json: &str) -> Result<Vec<Turn>> {
        let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!(
                "history must be a JSON array of [user, assistant] pairs: {e}"
            ))
        })?;
        Ok(pairs
            .into_iter()
            .map(|(user, assistant)| Turn { user, assistant })
            .collect())
    }

    /// The context ids for `query` under a window of `min(max_window_size, window_cap)` tokens.
    pub fn context(
        &self,
        tok: &Tokenizer,
        ct: &ChatTokens,
        query: &str,
        window_cap: usize,
    ) -> Context {
        make_context_for(
            tok,
            ct,
            self.format,
            &self.system,
            &self.history,
            query,
            self.max_window_size.min(window_cap),
        )
    }

    /// The reference's `raw_text` for `query` with the turns a context kept.
    pub fn raw_text(&self, query: &str, turns_kept: usize) -> String {
        let kept = &self.history[self.history.len() - turns_kept.min(self.history.len())..];
        raw_text(self.format, &self.system, kept, query)
    }

    /// Records a finished exchange.
    pub fn push(&mut self, user: impl Into<String>, assistant: impl Into<String>) {
        self.history.push(Turn {
            user: user.into(),
            assistant: assistant.into(),
        });
    }
}

/// A turn whose context is in the KV cache, waiting for [`ChatSession::generate`].
#[derive(Clone, Debug)]
pub struct PendingTurn {
    pub query: String,
    pub ctx: Context,
    /// Context tokens the prefill evaluated (the rest were reused from the cache).
    pub evaluated: usize,
    pub max_tokens: usize,
}

/// One answered turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The text streamed to the caller (up to a stop token or stop string).
    pub text: String,
    /// What goes into the history: `text` stripped, as the reference's `decode_tokens` returns.
    pub response: String,
    /// Every sampled id, a final stop token included.
    pub generated_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Length of the context the turn was answered from.
    pub prompt_tokens: usize,
    /// Context tokens the prefill actually evaluated; the rest came from the KV cache.
    pub prompt_tokens_evaluated: usize,
    /// History turns that fit in the window.
    pub turns_kept: usize,
}

/// A conversation answered on one session. The session's KV cache holds the conversation so
/// far; each turn rebuilds the context exactly as `make_context` does and evaluates only what
/// differs from the cache (normally the new turn). After the window drops old turns, or when
/// Qwen-1's NTK alpha for the new length differs from the cached one, it recomputes from the
/// first token that changed.
pub struct ChatSession {
    session: Session,
    pub conversation: Conversation,
    ct: ChatTokens,
    /// Extra stop strings for every turn (the format's own stop tokens always apply).
    pub stop_strings: Vec<String>,
}

impl ChatSession {
    pub fn new(session: Session, conversation: Conversation) -> Result<ChatSession> {
        let ct = ChatTokens::from_tokenizer(session.model().tokenizer()?)?;
        Ok(ChatSession {
            session,
            conversation,
            ct,
            stop_strings: Vec::new(),
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn into_session(self) -> Session {
        self.session
    }

    pub fn chat_tokens(&self) -> &ChatTokens {
        &self.ct
    }

    /// Forgets the history and the cache.
    pub fn clear(&mut self) {
        self.conversation.history.clear();
        self.session.reset();
    }

    /// The context `query` would be answered from, leaving room for `max_tokens` new tokens
    /// (at most half the context is reserved). Errors when the system prompt and the query
    /// alone do not fit in the session's context.
    pub fn context(&self, query: &str, max_tokens: usize) -> Result<Context> {
        let tok = self.session.model().tokenizer()?;
        let n_ctx = self.session.n_ctx();
        let reserve = max_tokens.min(n_ctx / 2);
        let ctx = self
            .conversation
            .context(tok, &self.ct, query, n_ctx - reserve);
        let room = n_ctx - usize::from(max_tokens > 0);
        if ctx.ids.len() > room {
            return Err(Error::InvalidArgument(format!(
                "the newest turn needs {} tokens with the system prompt{}, but the context holds \
                 {n_ctx} tokens{}; shorten the message or raise the context size (-c)",
                ctx.ids.len(),
                if ctx.turns_kept > 0 {
                    " and the history it kept"
                } else {
                    ""
                },
                if max_tokens > 0 {
                    " and generation needs at least one more"
                } else {
                    ""
                }
            )));
        }
        Ok(ctx)
    }

    /// Answers `query`: [`prefill`](Self::prefill) then [`generate`](Self::generate).
    pub fn send(
        &mut self,
        query: &str,
        sampler: &mut Sampler,
        max_tokens: usize,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let turn = self.prefill(query, max_tokens)?;
        self.generate(turn, sampler, on_text)
    }

    /// Builds the context for `query` and evaluates what the KV cache lacks (normally just the
    /// new turn). Call [`generate`](Self::generate) next, without touching the session between.
    pub fn prefill(&mut self, query: &str, max_tokens: usize) -> Result<PendingTurn> {
        let ctx = self.context(query, max_tokens)?;
        let before = self.session.n_evaluated();
        self.session.eval_reusing_prefix(&ctx.ids)?;
        let evaluated = (self.session.n_evaluated() - before) as usize;
        Ok(PendingTurn {
            query: query.to_string(),
            ctx,
            evaluated,
            max_tokens,
        })
    }

    /// Generates the answer to a prefilled turn, streaming text to `on_text` (return false to
    /// cancel), and records the turn in the history.
    pub fn generate(
        &mut self,
        turn: PendingTurn,
        sampler: &mut Sampler,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let (stop_tokens, mut stop_strings) = match self.conversation.format {
            ChatFormat::ChatMl => (self.ct.stop_tokens().to_vec(), Vec::new()),
            ChatFormat::Raw => (vec![self.ct.endoftext], vec!["Human:".to_string()]),
        };
        stop_strings.extend(self.stop_strings.iter().cloned());
        let opts = GenerateOptions {
            max_tokens: turn.max_tokens,
            stop_tokens,
            stop_strings,
        };
        let gen = generate_text(&mut self.session, sampler, &opts, on_text)?;
        let response = py_strip(&gen.text).to_string();
        self.conversation.push(turn.query, response.clone());
        Ok(Reply {
            text: gen.text,
            response,
            generated_ids: gen.token_ids,
            finish_reason: gen.finish_reason,
            prompt_tokens: turn.ctx.ids.len(),
            prompt_tokens_evaluated: turn.evaluated,
            turns_kept: turn.ctx.turns_kept,
        })
    }

    /// The reference's `decode_tokens` on a context and what was generated after it.
    pub fn decode_like_reference(
        &self,
        query: &str,
        ctx: &Context,
        generated: &[u32],
    ) -> Result<super::Decoded> {
        let tok = self.session.model().tokenizer()?;
        let mut all = ctx.ids.clone();
        all.extend_from_slice(generated);
        let raw = self.conversation.raw_text(query, ctx.turns_kept);
        Ok(decode_tokens(
            tok,
            &self.ct,
            self.conversation.format,
            &all,
            ctx.ids.len(),
            &raw,
        ))
    }
}
