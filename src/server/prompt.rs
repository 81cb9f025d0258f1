//! Chat requests → prompt ids and answers → OpenAI messages, through [`crate::chat::tools`]:
//! the prompt format follows the model (Qwen-1's ReAct / ChatML as `openai_api.py`, Qwen2.5's
//! chat template with `<tool_call>` blocks), the answer follows the request's dialect
//! (`functions` → `function_call`, `tools` → `tool_calls`). Control tokens go in by id and every
//! message is encoded as plain text, so a user who types `<|im_end|>` cannot end their turn.
//!
//! [`ToolStream`] decides, while a reply streams, which text is certainly part of the answer's
//! content, so the streamed content equals the non-streamed one.

use super::api::{ApiError, ChatCompletionRequest, Dialect};
use crate::chat::tools::{ParsedReply, ToolCall, ToolChat, ToolFormat, ToolPrompt};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// A rendered chat request.
#[derive(Clone, Debug)]
pub struct ChatPlan {
    pub prompt: ToolPrompt,
    pub dialect: Dialect,
}

/// Renders `req` for the model `chat` describes. `stop` are the request's stop strings (the
/// plan's `prompt.stop_strings` include them and the format's own).
pub fn chat_prompt(
    chat: &ToolChat,
    tok: &Tokenizer,
    req: &ChatCompletionRequest,
    stop: &[String],
) -> Result<ChatPlan, ApiError> {
    let messages = req.messages()?;
    let (functions, dialect) = req.functions()?;
    let prompt = chat
        .render(tok, &messages, &functions, stop)
        .map_err(|e| match e {
            crate::Error::InvalidArgument(m) => ApiError::param("messages", m),
            other => ApiError::internal(other.to_string()),
        })?;
    Ok(ChatPlan { prompt, dialect })
}

impl ChatPlan {
    /// The reply to a finished generation: `text` is everything streamed (up to the stop);
    /// `stopped_by_string` says whether a stop string ended it.
    pub fn parse(&self, chat: &ToolChat, text: &str, stopped_by_string: bool) -> ParsedReply {
        if self.dialect == Dialect::None {
            return ParsedReply::text(text);
        }
        let mut reply = chat.parse(&self.prompt, text, stopped_by_string);
        // Streaming cannot know in advance whether leading whitespace belongs to the content
        // (the parsers strip it around calls only), so it never does, streamed or not.
        let trimmed = reply.content.trim_start().len();
        reply.content.drain(..reply.content.len() - trimmed);
        reply
    }
}

/// `call_` and 24 hex digits, derived from the response id so each call's id is unique.
pub fn call_id(response_id: &str, index: usize) -> String {
    // FNV-1a over the id and the index, twice with different offsets.
    let hash = |seed: u64| {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        for b in response_id.bytes().chain(index.to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    format!("call_{:016x}{:08x}", hash(1), hash(2) as u32)
}

/// `tool_calls` entries in OpenAI's shape (with `index` when streamed).
pub fn tool_calls_json(response_id: &str, calls: &[ToolCall], streamed: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = c.id.clone().unwrap_or_else(|| call_id(response_id, i));
                let mut v = json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if streamed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// The assistant message of a finished reply, and its finish_reason (`None`: the engine's).
pub fn message_json(
    dialect: Dialect,
    reply: &ParsedReply,
    response_id: &str,
) -> (Value, Option<&'static str>) {
    let content = |c: &str| {
        if c.is_empty() && !reply.tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(c.to_string())
        }
    };
    match (dialect, reply.tool_calls.first()) {
        (Dialect::Functions, Some(call)) => (
            json!({
                "role": "assistant",
                "content": content(&reply.content),
                "function_call": {"name": call.name, "arguments": call.arguments},
            }),
            Some("function_call"),
        ),
        (Dialect::Tools, Some(_)) => (
            json!({
                "role": "assistant",
                "content": content(&reply.content),
                "tool_calls": tool_calls_json(response_id, &reply.tool_calls, false),
            }),
            Some("tool_calls"),
        ),
        _ => (json!({"role": "assistant", "content": reply.content}), None),
    }
}

/// Streamed content of a reply that may call functions.
///
/// - No functions: every piece is content as it comes.
/// - Qwen2.5 format: text before a `<tool_call>` is content; a possible beginning of the tag
///   and trailing whitespace are held back until the next piece decides them; a reply that
///   starts like a bare JSON call (`{` or a code fence) is held to the end, where the parser
///   decides.
/// - ReAct: the content (the `Final Answer`, or the thought before a call) is known only once
///   the reply is parsed, so it is sent at the end.
///
/// At the end, [`finish`](Self::finish) returns the rest of the parsed content: the streamed
/// pieces and the rest together are exactly [`ChatPlan::parse`]'s content.
pub struct ToolStream {
    mode: Mode,
    raw: String,
    /// Bytes of content sent so far.
    sent: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Qwen25,
    /// Everything waits for the end.
    Held,
}

const OPEN: &str = "<tool_call>";

impl ToolStream {
    pub fn new(plan: &ChatPlan) -> ToolStream {
        let mode = match (plan.dialect, plan.prompt.format) {
            (Dialect::None, _) => Mode::Plain,
            (_, ToolFormat::Qwen25) => Mode::Qwen25,
            (_, ToolFormat::React) => Mode::Held,
        };
        ToolStream {
            mode,
            raw: String::new(),
            sent: 0,
        }
    }

    /// Adds generated text; returns the content that is now certain.
    pub fn push(&mut self, piece: &str) -> Option<String> {
        if self.mode == Mode::Plain {
            return (!piece.is_empty()).then(|| piece.to_string());
        }
        self.raw.push_str(piece);
        if self.mode != Mode::Qwen25 {
            return None;
        }
        let body = self.raw.trim_start();
        if body.is_empty() {
            return None;
        }
        if body.starts_with('{') || body.starts_with('`') {
            self.mode = Mode::Held;
            return None;
        }
        let limit = match body.find(OPEN) {
            Some(at) => {
                self.mode = Mode::Held;
                at
            }
            None => body.len() - held_prefix(body, OPEN),
        };
        let certain = body[..limit].trim_end();
        if certain.len() > self.sent {
            let out = certain[self.sent..].to_string();
            self.sent = certain.len();
            Some(out)
        } else {
            None
        }
    }

    /// The content not sent yet, given the parsed reply.
    pub fn finish(&mut self, reply: &ParsedReply) -> String {
        if self.mode == Mode::Plain {
            return String::new();
        }
        let content = &reply.content;
        // The sent text is a prefix of the content (see the type's comment); should a parser
        // ever disagree, the common prefix is kept and the rest sent.
        let body = self.raw.trim_start();
        let sent = &body[..self.sent.min(body.len())];
        let common = content
            .char_indices()
            .zip(sent.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, c), _)| i + c.len_utf8());
        self.sent = 0;
        content[common..].to_string()
    }
}

/// Length of the longest tail of `text` that is a proper prefix of `tag`.
fn held_prefix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&k| text.ends_with(&tag[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tools::FinishKind;

    fn plan(dialect: Dialect, format: ToolFormat) -> ChatPlan {
        ChatPlan {
            prompt: ToolPrompt {
                format,
                ids: vec![1],
                text: String::new(),
                stop_strings: vec![],
                continuation: false,
                functions: vec!["get_weather".into()],
                turns_kept: 0,
            },
            dialect,
        }
    }

    /// A vocabulary of the 256 bytes and ChatML's control tokens.
    fn byte_tokenizer() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| crate::tokenizer::bytes_to_unicode(&[b]))
            .collect();
        tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut types = vec![1; 256];
        types.extend([3, 3, 3]);
        Tokenizer::from_gguf_vocab(&refs, &types).unwrap()
    }

    /// Streams `pieces` and returns (everything sent, the parsed reply).
    fn stream(dialect: Dialect, format: ToolFormat, pieces: &[&str]) -> (String, ParsedReply) {
        let p = plan(dialect, format);
        let chat = ToolChat::new(&byte_tokenizer(), format, None).unwrap();
        let mut ts = ToolStream::new(&p);
        let mut sent = String::new();
        for piece in pieces {
            if let Some(s) = ts.push(piece) {
                sent.push_str(&s);
            }
        }
        let text: String = pieces.concat();
        let reply = p.parse(&chat, &text, false);
        sent.push_str(&ts.finish(&reply));
        (sent, reply)
    }

    #[test]
    fn held_prefixes() {
        assert_eq!(held_prefix("abc<tool", OPEN), 5);
        assert_eq!(held_prefix("abc<", OPEN), 1);
        assert_eq!(held_prefix("abc", OPEN), 0);
        assert_eq!(held_prefix("<tool_call", OPEN), 10);
    }

    #[test]
    fn qwen25_text_then_call() {
        let pieces = [
            " I will",
            " check",
            " the weather. <",
            "tool_",
            "call>\n{\"name\": \"get_weather\", ",
            "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        ];
        let (sent, reply) = stream(Dialect::Tools, ToolFormat::Qwen25, &pieces);
        assert_eq!(reply.finish, FinishKind::ToolCalls);
        assert_eq!(reply.content, "I will check the weather.");
        assert_eq!(sent, reply.content);
        assert_eq!(reply.tool_calls[0].name, "get_weather");
    }

    #[test]
    fn qwen25_plain_answer_streams() {
        let p = plan(Dialect::Tools, ToolFormat::Qwen25);
        let mut ts = ToolStream::new(&p);
        assert_eq!(ts.push("\nThe answer"), Some("The answer".into()));
        assert_eq!(ts.push(" is "), Some(" is".into()));
        assert_eq!(ts.push("<t"), None);
        assert_eq!(ts.push("ag>42  "), Some(" <tag>42".into()));
        let pieces = ["\nThe answer", " is ", "<t", "ag>42  "];
        let (sent, reply) = stream(Dialect::Tools, ToolFormat::Qwen25, &pieces);
        assert_eq!(reply.finish, FinishKind::Stop);
        assert_eq!(sent, reply.content);
        assert_eq!(sent, "The answer is <tag>42  ");
    }

    #[test]
    fn qwen25_bare_json_call_is_held() {
        let pieces = [
            "{\"name\": \"get_weather\",",
            " \"arguments\": {\"city\": \"Paris\"}}",
        ];
        let (sent, reply) = stream(Dialect::Functions, ToolFormat::Qwen25, &pieces);
        assert_eq!(reply.finish, FinishKind::ToolCalls);
        assert_eq!(sent, "");
        let (msg, finish) = message_json(Dialect::Functions, &reply, "chatcmpl-x");
        assert_eq!(finish, Some("function_call"));
        assert_eq!(msg["function_call"]["name"], "get_weather");
        assert_eq!(msg["function_call"]["arguments"], "{\"city\": \"Paris\"}");
        assert!(msg["content"].is_null());
    }

    #[test]
    fn react_waits_for_the_parse() {
        let pieces = ["Thought: I know.", "\nFinal Answer: ", "Paris."];
        let (sent, reply) = stream(Dialect::Functions, ToolFormat::React, &pieces);
        assert_eq!(reply.content, "Paris.");
        assert_eq!(sent, "Paris.");
        let pieces = [
            "Thought: look it up",
            "\nAction: get_weather",
            "\nAction Input: {\"city\": \"Paris\"}",
        ];
        let (_, reply) = stream(Dialect::Tools, ToolFormat::React, &pieces);
        let (msg, finish) = message_json(Dialect::Tools, &reply, "chatcmpl-x");
        assert_eq!(finish, Some("tool_calls"));
        let calls = msg["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    }

    #[test]
    fn plain_dialect_streams_everything() {
        let (sent, reply) = stream(
            Dialect::None,
            ToolFormat::React,
            &[" a", "<tool_call>", " b "],
        );
        assert_eq!(sent, " a<tool_call> b ");
        assert_eq!(reply.content, sent);
    }

    #[test]
    fn call_ids_differ() {
        assert_ne!(call_id("a", 0), call_id("a", 1));
        assert_ne!(call_id("a", 0), call_id("b", 0));
        assert_eq!(call_id("a", 0).len(), 5 + 24);
    }
}
