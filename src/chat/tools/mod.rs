//! Tool use (function calling) in the two dialects Qwen models were trained on:
//!
//! - [`ToolFormat::React`]: Qwen-1's ReAct prompting exactly as the reference `openai_api.py`
//!   does it: the function specs become an instruction in front of the (last) question,
//!   assistant calls become `Thought:`/`Action:`/`Action Input:` lines, results
//!   `Observation:` lines, `Observation:` is a stop string, and the reply is parsed by its
//!   `parse_response`. See [`react`].
//! - [`ToolFormat::Qwen25`]: the `<tool_call>` JSON format described by the chat template
//!   embedded in Qwen2.5 GGUF files (tools listed in `<tools></tools>` in the system turn, calls
//!   as `<tool_call>{"name": .., "arguments": ..}</tool_call>`, results as `<tool_response>`
//!   blocks in a user turn). See [`qwen25`].
//!
//! [`ToolChat`] ties them to a model: [`render`](ToolChat::render) turns OpenAI-style
//! [`ChatMessage`]s plus [`FunctionSpec`]s into prompt ids (control tokens by id, every message
//! text encoded as plain text, so content cannot inject control tokens),
//! [`generate`](ToolChat::generate) runs the model with the format's stop strings and
//! [`parse`](ToolChat::parse) turns the generated text into a [`ParsedReply`].

pub mod pyjson;
pub mod qwen25;
pub mod react;

use super::{make_context, py_strip, raw_text, stop::generate_text, ChatTokens, GenerateOptions};
use super::{Generation, DEFAULT_MAX_WINDOW_SIZE};
use crate::error::{Error, Result};
use crate::model::{Arch, Model};
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::{EncodeMode, Tokenizer};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub use qwen25::Qwen25Template;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// The author of a [`ChatMessage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a legacy `function_call` (OpenAI's `functions` API).
    Function,
    /// The result of one of an assistant's `tool_calls` (OpenAI's `tools` API).
    Tool,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role> {
        Ok(match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "function" => Role::Function,
            "tool" => Role::Tool,
            other => {
                return Err(invalid(format!(
                    "unknown message role `{other}` (expected system, user, assistant, function \
                     or tool)"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Function => "function",
            Role::Tool => "tool",
        }
    }

    /// A function or tool result.
    pub fn is_result(self) -> bool {
        matches!(self, Role::Function | Role::Tool)
    }
}

/// One function call: made by an assistant message, or parsed from generated text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// OpenAI's `tool_calls[].id`; `None` for legacy `function_call`s and parsed calls.
    pub id: Option<String>,
    pub name: String,
    /// The arguments as JSON text (OpenAI's convention). A ReAct `Action Input` is passed on
    /// as the model wrote it, which need not be valid JSON.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(name: impl Into<String>, arguments: impl Into<String>) -> ToolCall {
        ToolCall {
            id: None,
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// `{"name": .., "arguments": ..}` (a legacy `function_call`) or
    /// `{"id": .., "type": "function", "function": {"name": .., "arguments": ..}}` (an entry of
    /// `tool_calls`). `arguments` may be JSON text (OpenAI) or a JSON value (as Qwen's own
    /// examples write it), which is then kept as its `json.dumps` text.
    pub fn from_value(v: &Value) -> Result<ToolCall> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(format!("a function call must be an object, got {v}")))?;
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(invalid(format!("tool call `id` must be a string: {other}")))
            }
        };
        let func = match obj.get("function") {
            Some(f) => {
                if let Some(t) = obj.get("type").and_then(Value::as_str) {
                    if t != "function" {
                        return Err(invalid(format!(
                            "tool call of type `{t}` (only `function` is supported)"
                        )));
                    }
                }
                f.as_object().ok_or_else(|| {
                    invalid(format!("tool call `function` must be an object: {f}"))
                })?
            }
            None => obj,
        };
        let name = match func.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(invalid(format!("function call without a `name`: {v}"))),
        };
        let arguments = match func.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => {
                return Err(invalid(format!(
                    "function call `{name}` without `arguments`"
                )))
            }
            Some(other) => pyjson::dumps(other),
        };
        Ok(ToolCall {
            id,
            name,
            arguments,
        })
    }

    /// `{"name": .., "arguments": ..}` (plus `"id"` when there is one).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(id) = &self.id {
            m.insert("id".into(), Value::String(id.clone()));
        }
        m.insert("name".into(), Value::String(self.name.clone()));
        m.insert("arguments".into(), Value::String(self.arguments.clone()));
        Value::Object(m)
    }
}

/// One message of an OpenAI-style chat request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    /// `null` content is read as empty.
    pub content: String,
    /// The function's name on a `function` message (informational: neither reference uses it).
    pub name: Option<String>,
    /// An assistant's `function_call` (one) or `tool_calls` (any number).
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `tool` message answers (informational: the formats match results to calls
    /// by order).
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::Assistant, content)
    }

    /// An assistant message that calls functions.
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// The result of a legacy function call.
    pub fn function(name: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            name: Some(name.into()),
            ..Self::new(Role::Function, content)
        }
    }

    /// The result of a tool call.
    pub fn tool(tool_call_id: Option<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            tool_call_id,
            ..Self::new(Role::Tool, content)
        }
    }

    /// One message in OpenAI's shape: `role`, `content` (string, null, or a list of
    /// `{"type": "text", "text": ..}` parts, joined with newlines), `name`, `function_call`,
    /// `tool_calls`, `tool_call_id`.
    pub fn from_value(v: &Value) -> Result<ChatMessage> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(format!("a message must be an object, got {v}")))?;
        let role = match obj.get("role") {
            Some(Value::String(s)) => Role::parse(s)?,
            _ => return Err(invalid(format!("message without a `role`: {v}"))),
        };
        let content = match obj.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                        _ => {
                            return Err(invalid(format!(
                                "only text content parts are supported, got {p}"
                            )))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(other) => {
                return Err(invalid(format!(
                    "message `content` must be a string, null or a list of text parts: {other}"
                )))
            }
        };
        let opt_str = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "message `{key}` must be a string: {other}"
                ))),
            }
        };
        let name = opt_str("name")?;
        let tool_call_id = opt_str("tool_call_id")?;
        let mut tool_calls = Vec::new();
        match obj.get("function_call") {
            None | Some(Value::Null) => {}
            Some(fc) => tool_calls.push(ToolCall::from_value(fc)?),
        }
        match obj.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for c in calls {
                    tool_calls.push(ToolCall::from_value(c)?);
                }
            }
            Some(other) => {
                return Err(invalid(format!("`tool_calls` must be a list: {other}")));
            }
        }
        if !tool_calls.is_empty() && role != Role::Assistant {
            return Err(invalid(format!(
                "only assistant messages make function calls, not {}",
                role.as_str()
            )));
        }
        Ok(ChatMessage {
            role,
            content,
            name,
            tool_calls,
            tool_call_id,
        })
    }

    /// A JSON list of messages, or an object with a `messages` list (a request body).
    pub fn list_from_json(text: &str) -> Result<Vec<ChatMessage>> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("messages are not valid JSON: {e}")))?;
        let list = match &v {
            Value::Array(a) => a,
            Value::Object(o) => match o.get("messages") {
                Some(Value::Array(a)) => a,
                _ => {
                    return Err(invalid(
                        "expected a list of messages or {\"messages\": [..]}",
                    ))
                }
            },
            _ => {
                return Err(invalid(
                    "expected a list of messages or {\"messages\": [..]}",
                ))
            }
        };
        list.iter().map(ChatMessage::from_value).collect()
    }
}

impl<'de> Deserialize<'de> for ChatMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        ChatMessage::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// A function the model may call, from either OpenAI shape: `{"name", "description",
/// "parameters"}` (the `functions` API, also with Qwen-1's `name_for_model`, `name_for_human`,
/// `description_for_model`) or `{"type": "function", "function": {..}}` (the `tools` API).
///
/// The function object is kept as given, keys in order, because the Qwen2.5 template prints
/// it whole; the accessors read the fields the ReAct prompt uses.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSpec {
    object: Map<String, Value>,
}

impl FunctionSpec {
    /// A function with a name, a description and a JSON-schema `parameters` object.
    pub fn new(name: &str, description: &str, parameters: Value) -> FunctionSpec {
        let mut object = Map::new();
        object.insert("name".into(), Value::String(name.into()));
        object.insert("description".into(), Value::String(description.into()));
        object.insert("parameters".into(), parameters);
        FunctionSpec { object }
    }

    pub fn from_value(v: &Value) -> Result<FunctionSpec> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(format!("a function spec must be an object, got {v}")))?;
        let func = if obj.contains_key("type") || obj.contains_key("function") {
            match obj.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(t) => {
                    return Err(invalid(format!(
                        "tool of type `{t}` (only `function` is supported)"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "tool without `\"type\": \"function\"`: {v}"
                    )))
                }
            }
            obj.get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(format!("tool without a `function` object: {v}")))?
        } else {
            obj
        };
        for key in [
            "name",
            "name_for_model",
            "name_for_human",
            "description",
            "description_for_model",
        ] {
            if let Some(x) = func.get(key) {
                if !x.is_string() {
                    return Err(invalid(format!("function `{key}` must be a string: {x}")));
                }
            }
        }
        let spec = FunctionSpec {
            object: func.clone(),
        };
        if spec.name_for_model().is_empty() {
            return Err(invalid(format!(
                "function without a `name` (or `name_for_model`): {v}"
            )));
        }
        Ok(spec)
    }

    /// A list of specs in either shape, or an object with a `functions` or `tools` list.
    pub fn list_from_json(text: &str) -> Result<Vec<FunctionSpec>> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("function specs are not valid JSON: {e}")))?;
        let list =
            match &v {
                Value::Array(a) => a,
                Value::Object(o) => match (o.get("tools"), o.get("functions")) {
                    (Some(Value::Array(a)), _) | (None, Some(Value::Array(a))) => a,
                    _ => {
                        return Err(invalid(
                            "expected a list of functions, or an object with a `tools` or \
                         `functions` list",
                        ))
                    }
                },
                _ => return Err(invalid(
                    "expected a list of functions, or an object with a `tools` or `functions` list",
                )),
            };
        list.iter().map(FunctionSpec::from_value).collect()
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.object.get(key).and_then(Value::as_str)
    }

    /// `name` (empty when only `name_for_model` is given).
    pub fn name(&self) -> &str {
        self.str_field("name").unwrap_or("")
    }

    /// `name_for_model`, else `name`: what the model writes after `Action:`.
    pub fn name_for_model(&self) -> &str {
        self.str_field("name_for_model").unwrap_or(self.name())
    }

    /// `name_for_human`, else `name`.
    pub fn name_for_human(&self) -> &str {
        self.str_field("name_for_human").unwrap_or(self.name())
    }

    pub fn description(&self) -> &str {
        self.str_field("description").unwrap_or("")
    }

    /// `description_for_model`, else `description`.
    pub fn description_for_model(&self) -> &str {
        self.str_field("description_for_model")
            .unwrap_or(self.description())
    }

    pub fn parameters(&self) -> Option<&Value> {
        self.object.get("parameters")
    }

    /// The function object as given (the `function` member of a tool).
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.object
    }
}

impl<'de> Deserialize<'de> for FunctionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        FunctionSpec::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// The tool-use dialect of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// Qwen-1's ReAct prompt (`openai_api.py`).
    React,
    /// Qwen2.5's `<tool_call>` JSON (its chat template).
    Qwen25,
}

impl ToolFormat {
    pub fn parse(s: &str) -> Result<ToolFormat> {
        match s {
            "react" => Ok(ToolFormat::React),
            "qwen25" | "qwen2.5" => Ok(ToolFormat::Qwen25),
            other => Err(invalid(format!(
                "tool format `{other}` (expected `react` or `qwen25`)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ToolFormat::React => "react",
            ToolFormat::Qwen25 => "qwen25",
        }
    }

    /// Qwen-1 (`qwen`) uses ReAct; a `qwen2` model whose chat template mentions `<tool_call>`
    /// uses the Qwen2.5 format; anything else falls back to ReAct, which needs nothing from
    /// the template.
    pub fn choose(arch: Arch, chat_template: Option<&str>) -> ToolFormat {
        match (arch, chat_template) {
            (Arch::Qwen2, Some(t)) if t.contains("<tool_call>") => ToolFormat::Qwen25,
            _ => ToolFormat::React,
        }
    }

    /// [`choose`](Self::choose) from the model's architecture and `tokenizer.chat_template`.
    pub fn for_model(model: &Model) -> ToolFormat {
        Self::choose(model.config.arch, chat_template(model))
    }
}

fn chat_template(model: &Model) -> Option<&str> {
    model
        .file()
        .get_opt_str("tokenizer.chat_template")
        .ok()
        .flatten()
}

/// How a reply ended, in OpenAI's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishKind {
    /// A plain answer (`"stop"`).
    Stop,
    /// The reply calls functions (`"tool_calls"`; the legacy `functions` API calls it
    /// `"function_call"`).
    ToolCalls,
}

impl FinishKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishKind::Stop => "stop",
            FinishKind::ToolCalls => "tool_calls",
        }
    }
}

/// Generated text, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedReply {
    /// The answer (ReAct: the `Final Answer`, or the thought before a call).
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: FinishKind,
}

impl ParsedReply {
    pub fn text(content: impl Into<String>) -> ParsedReply {
        ParsedReply {
            content: content.into(),
            tool_calls: Vec::new(),
            finish: FinishKind::Stop,
        }
    }
}

/// The reference's `add_extra_stop_words`: each stop word also without its leading newlines.
pub fn add_extra_stop_words(stops: &[String]) -> Vec<String> {
    let mut out: Vec<String> = stops.to_vec();
    for s in stops {
        let t = s.trim_start_matches('\n');
        if !t.is_empty() && !out.iter().any(|x| x == t) {
            out.push(t.to_string());
        }
    }
    out
}

/// A prompt built by [`ToolChat::render`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolPrompt {
    pub format: ToolFormat,
    /// The ids to prefill.
    pub ids: Vec<u32>,
    /// The prompt as text, control tokens spelled out (what the reference's prompt string is).
    pub text: String,
    /// Stop strings for the generation (ReAct with functions: `Observation:` and the caller's
    /// own, each also without leading newlines; Qwen2.5: the caller's). ChatML's stop tokens
    /// apply as well.
    pub stop_strings: Vec<String>,
    /// ReAct only: the last message was an assistant or function message, so the prompt leaves
    /// that assistant turn open and the model continues it (the reference's
    /// `text_complete_last_message`, after `\nThought:` when a result came last).
    pub continuation: bool,
    /// The names of the functions offered (`name_for_model`); when there are any, the reply is
    /// parsed for calls.
    pub functions: Vec<String>,
    /// ReAct chat prompts: history turns kept by the window (all others: every message).
    pub turns_kept: usize,
}

/// Renders tool-use prompts and parses replies for one model.
#[derive(Clone, Debug)]
pub struct ToolChat {
    pub format: ToolFormat,
    /// The Qwen2.5 template's own texts (default system prompt, tool instructions).
    pub template: Qwen25Template,
    /// ReAct chat prompts keep history turns while the context stays below this many tokens,
    /// like `make_context`.
    pub max_window_size: usize,
    ct: ChatTokens,
}

impl ToolChat {
    /// The model's format ([`ToolFormat::for_model`]) and template texts.
    pub fn for_model(model: &Model) -> Result<ToolChat> {
        Self::new(
            model.tokenizer()?,
            ToolFormat::for_model(model),
            chat_template(model),
        )
    }

    /// An explicit format; `chat_template` supplies the Qwen2.5 texts (built-in Qwen2.5 texts
    /// when it is `None` or lacks them).
    pub fn new(
        tok: &Tokenizer,
        format: ToolFormat,
        chat_template: Option<&str>,
    ) -> Result<ToolChat> {
        Ok(ToolChat {
            format,
            template: chat_template
                .map(Qwen25Template::from_chat_template)
                .unwrap_or_default(),
            max_window_size: DEFAULT_MAX_WINDOW_SIZE,
            ct: ChatTokens::from_tokenizer(tok)?,
        })
    }

    pub fn chat_tokens(&self) -> &ChatTokens {
        &self.ct
    }

    /// The prompt for `messages` with `functions` available (none: a plain chat in the same
    /// format). `stop` are the caller's own stop strings.
    pub fn render(
        &self,
        tok: &Tokenizer,
        messages: &[ChatMessage],
        functions: &[FunctionSpec],
        stop: &[String],
    ) -> Result<ToolPrompt> {
        match self.format {
            ToolFormat::React => self.render_react(tok, messages, functions, stop),
            ToolFormat::Qwen25 => {
                let pieces = qwen25::render(&self.template, messages, functions)?;
                Ok(ToolPrompt {
                    format: self.format,
                    ids: pieces.encode(tok),
                    text: pieces.text(),
                    stop_strings: stop.to_vec(),
                    continuation: false,
                    functions: names(functions),
                    turns_kept: 0,
                })
            }
        }
    }

    fn render_react(
        &self,
        tok: &Tokenizer,
        messages: &[ChatMessage],
        functions: &[FunctionSpec],
        stop: &[String],
    ) -> Result<ToolPrompt> {
        let q = react::parse_messages(messages, functions)?;
        let mut stop_strings = add_extra_stop_words(stop);
        if !functions.is_empty() && !stop_strings.iter().any(|s| s == react::STOP_WORD) {
            stop_strings.push(react::STOP_WORD.to_string());
        }
        let (ids, text, continuation, turns_kept) = match &q.query {
            Some(query) => {
                let ctx = make_context(
                    tok,
                    &self.ct,
                    &q.system,
                    &q.history,
                    query,
                    self.max_window_size,
                );
                let kept = &q.history[q.history.len() - ctx.turns_kept..];
                let text = raw_text(super::ChatFormat::ChatMl, &q.system, kept, query);
                (ctx.ids, text, false, ctx.turns_kept)
            }
            None => {
                let pieces = react::continuation_prompt(&q.system, &q.history);
                (pieces.encode(tok), pieces.text(), true, q.history.len())
            }
        };
        Ok(ToolPrompt {
            format: self.format,
            ids,
            text,
            stop_strings,
            continuation,
            functions: names(functions),
            turns_kept,
        })
    }

    /// Parses what the model generated after `prompt`. `text` is the generated text up to
    /// (without) the stop string or stop token that ended it; `stopped_by_string` says whether
    /// a stop string did.
    ///
    /// ReAct follows the reference's handling of the response first: a chat reply is stripped
    /// (`decode_tokens`; only at the front when a stop string cut it, since the reference
    /// strips before it trims the stop word), a continuation is not (`text_complete_last_message`).
    pub fn parse(&self, prompt: &ToolPrompt, text: &str, stopped_by_string: bool) -> ParsedReply {
        match prompt.format {
            ToolFormat::React => {
                let text = if prompt.continuation {
                    text
                } else if stopped_by_string {
                    text.trim_start_matches(is_py_space)
                } else {
                    py_strip(text)
                };
                if !prompt.functions.is_empty() {
                    react::parse_response(text)
                } else {
                    ParsedReply::text(text)
                }
            }
            ToolFormat::Qwen25 => {
                if !prompt.functions.is_empty() {
                    qwen25::parse_response_lenient(text, &prompt.functions)
                } else {
                    ParsedReply::text(text)
                }
            }
        }
    }

    /// Evaluates the prompt (reusing whatever prefix the session already holds) and generates
    /// up to `max_tokens` with ChatML's stop tokens and the prompt's stop strings, streaming
    /// text to `on_text` (return false to cancel); then parses the reply.
    pub fn generate(
        &self,
        session: &mut Session,
        sampler: &mut Sampler,
        prompt: &ToolPrompt,
        max_tokens: usize,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Generation, ParsedReply)> {
        let n_ctx = session.n_ctx();
        if prompt.ids.len() + usize::from(max_tokens > 0) > n_ctx {
            return Err(invalid(format!(
                "the prompt has {} tokens, more than the context of {n_ctx} allows",
                prompt.ids.len()
            )));
        }
        session.eval_reusing_prefix(&prompt.ids)?;
        let opts = GenerateOptions {
            max_tokens,
            stop_tokens: self.ct.stop_tokens().to_vec(),
            stop_strings: prompt.stop_strings.clone(),
        };
        let gen = generate_text(session, sampler, &opts, on_text)?;
        let parsed = self.parse(prompt, &gen.text, gen.stop_string.is_some());
        Ok((gen, parsed))
    }
}

fn names(functions: &[FunctionSpec]) -> Vec<String> {
    functions
        .iter()
        .map(|f| f.name_for_model().to_string())
        .collect()
}

/// Python's `str.isspace()` for one character (as [`py_strip`] uses it).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.lstrip('\n').rstrip()`, which the ReAct reference applies to every message.
fn lstrip_nl_rstrip(s: &str) -> &str {
    s.trim_start_matches('\n').trim_end_matches(is_py_space)
}

/// Prompt text made of template text (which may spell control tokens) and message content
/// (always plain text). Encoding splits only template text at control tokens, then encodes each
/// run of text between control tokens as one string, like a Hugging Face tokenizer does with the
/// rendered template, except that content can never become a control token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptPieces {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Template(String),
    Content(String),
}

/// The token texts that template text may contain, inserted by id when the vocabulary has them.
const TEMPLATE_TOKENS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
];

impl PromptPieces {
    /// Text written by the template (control-token spellings in it become ids).
    pub fn template(&mut self, s: &str) {
        if let Some(Piece::Template(t)) = self.pieces.last_mut() {
            t.push_str(s);
        } else {
            self.pieces.push(Piece::Template(s.to_string()));
        }
    }

    /// Text from a message or a function spec (always plain text).
    pub fn content(&mut self, s: &str) {
        if let Some(Piece::Content(t)) = self.pieces.last_mut() {
            t.push_str(s);
        } else {
            self.pieces.push(Piece::Content(s.to_string()));
        }
    }

    /// The whole prompt as one string.
    pub fn text(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Template(s) | Piece::Content(s) => s.as_str(),
            })
            .collect()
    }

    /// Drops `suffix` from the end of the prompt (it must end template text).
    fn strip_template_suffix(&mut self, suffix: &str) -> bool {
        if let Some(Piece::Template(t)) = self.pieces.last_mut() {
            if t.ends_with(suffix) {
                t.truncate(t.len() - suffix.len());
                if t.is_empty() {
                    self.pieces.pop();
                }
                return true;
            }
        }
        false
    }

    pub fn encode(&self, tok: &Tokenizer) -> Vec<u32> {
        let specials: Vec<(&str, u32)> = TEMPLATE_TOKENS
            .iter()
            .filter_map(|s| tok.special_id(s).map(|id| (*s, id)))
            .collect();
        let mut ids = Vec::new();
        let mut run = String::new();
        let flush = |run: &mut String, ids: &mut Vec<u32>| {
            if !run.is_empty() {
                ids.extend(tok.encode(run, EncodeMode::Text));
                run.clear();
            }
        };
        for p in &self.pieces {
            match p {
                Piece::Content(s) => run.push_str(s),
                Piece::Template(s) => {
                    let mut rest = s.as_str();
                    loop {
                        let next = specials
                            .iter()
                            .filter_map(|&(t, id)| rest.find(t).map(|at| (at, t.len(), id)))
                            .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
                        match next {
                            Some((at, len, id)) => {
                                run.push_str(&rest[..at]);
                                flush(&mut run, &mut ids);
                                ids.push(id);
                                rest = &rest[at + len..];
                            }
                            None => {
                                run.push_str(rest);
                                break;
                            }
                        }
                    }
                }
            }
        }
        flush(&mut run, &mut ids);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_stop_words_like_the_reference() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            add_extra_stop_words(&s(&["\nObservation:", "x", "\n\n", "Observation:"])),
            s(&["\nObservation:", "x", "\n\n", "Observation:"])
        );
        assert_eq!(
            add_extra_stop_words(&s(&["\n\nUser:", "a"])),
            s(&["\n\nUser:", "a", "User:"])
        );
        assert!(add_extra_stop_words(&[]).is_empty());
    }

    #[test]
    fn messages_from_openai_json() {
        let msgs = ChatMessage::list_from_json(
            r#"{"messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{\"x\": 1}"}},
                {"role": "function", "name": "f", "content": "42"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "g", "arguments": {"b": 2, "a": [1.5]}}},
                    {"id": "call_2", "type": "function", "function": {"name": "h", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "r1"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(msgs.len(), 6);
        assert_eq!(msgs[1].content, "a\nb");
        assert_eq!(msgs[2].content, "");
        assert_eq!(msgs[2].tool_calls, vec![ToolCall::new("f", "{\"x\": 1}")]);
        assert_eq!(msgs[3].name.as_deref(), Some("f"));
        // An object `arguments` keeps its key order, as `json.dumps` text.
        assert_eq!(msgs[4].tool_calls[0].arguments, r#"{"b": 2, "a": [1.5]}"#);
        assert_eq!(msgs[4].tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(msgs[4].tool_calls[1].name, "h");
        assert_eq!(msgs[5].role, Role::Tool);
        assert_eq!(msgs[5].tool_call_id.as_deref(), Some("call_1"));
        // serde works too.
        let m: ChatMessage = serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::user("hi"));
    }

    #[test]
    fn bad_messages_are_errors() {
        for bad in [
            r#"[{"role": "robot", "content": "x"}]"#,
            r#"[{"content": "x"}]"#,
            r#"[{"role": "user", "content": 5}]"#,
            r#"[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]"#,
            r#"[{"role": "user", "function_call": {"name": "f", "arguments": "{}"}}]"#,
            r#"[{"role": "assistant", "function_call": {"arguments": "{}"}}]"#,
            r#"[{"role": "assistant", "function_call": {"name": "f"}}]"#,
            r#"[{"role": "assistant", "tool_calls": {"name": "f"}}]"#,
            r#"[{"role": "assistant", "tool_calls": [{"type": "retrieval", "function": {"name": "f", "arguments": "{}"}}]}]"#,
            r#"{"msgs": []}"#,
            r#"[1]"#,
            "not json",
        ] {
            let e = ChatMessage::list_from_json(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn function_specs_from_both_shapes() {
        let a = FunctionSpec::list_from_json(
            r#"[{"name": "f", "description": "d", "parameters": {"type": "object"}}]"#,
        )
        .unwrap();
        let b = FunctionSpec::list_from_json(
            r#"{"tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].name(), "f");
        assert_eq!(a[0].name_for_model(), "f");
        assert_eq!(a[0].name_for_human(), "f");
        assert_eq!(a[0].description_for_model(), "d");
        let c = FunctionSpec::list_from_json(
            r#"{"functions": [{"name_for_model": "m", "name_for_human": "H", "description_for_model": "dm", "parameters": []}]}"#,
        )
        .unwrap();
        assert_eq!(c[0].name(), "");
        assert_eq!(c[0].name_for_model(), "m");
        assert_eq!(c[0].name_for_human(), "H");
        assert_eq!(c[0].description_for_model(), "dm");
        for bad in [
            r#"[{"description": "no name"}]"#,
            r#"[{"type": "code_interpreter"}]"#,
            r#"[{"type": "function"}]"#,
            r#"[{"name": 3}]"#,
            r#"{"tools": 3}"#,
            r#""f""#,
        ] {
            assert!(FunctionSpec::list_from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_choice() {
        let t25 = "{%- if tools %}<tool_call>{%- endif %}";
        assert_eq!(ToolFormat::choose(Arch::Qwen, Some(t25)), ToolFormat::React);
        assert_eq!(
            ToolFormat::choose(Arch::Qwen2, Some(t25)),
            ToolFormat::Qwen25
        );
        assert_eq!(
            ToolFormat::choose(Arch::Qwen2, Some("chatml")),
            ToolFormat::React
        );
        assert_eq!(ToolFormat::choose(Arch::Qwen2, None), ToolFormat::React);
        assert_eq!(ToolFormat::parse("qwen25").unwrap(), ToolFormat::Qwen25);
        assert!(ToolFormat::parse("hermes").is_err());
    }
}
