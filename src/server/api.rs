//! OpenAI's request and response shapes (serde), request validation, and OpenAI's error JSON.
//!
//! Bodies are parsed here rather than by a framework extractor, so malformed JSON, a wrong
//! type or an out-of-range value all become a 400 with OpenAI's error object that names the
//! offending field.

use crate::chat::tools::{ChatMessage, FunctionSpec};
use crate::sampler::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An error as OpenAI returns it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 about one request field.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::invalid(message)
        }
    }

    pub fn context_overflow(message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(message)
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            message: "Incorrect API key provided. Pass it as `Authorization: Bearer KEY`.".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: 413,
            message: format!("the request body is larger than the limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    pub fn overloaded() -> ApiError {
        ApiError {
            status: 503,
            message: "The server is busy: every slot is in use and the queue is full. Retry later."
                .into(),
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
            retry_after: Some(1),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 503,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
            retry_after: Some(5),
        }
    }

    pub fn timeout() -> ApiError {
        ApiError {
            status: 504,
            message: "The request did not finish within the server's time limit.".into(),
            kind: "server_error",
            param: None,
            code: Some("timeout"),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// Parses a JSON body into `T`; any failure is a 400 that says where (`param` names the
/// top-level field, the message the full path such as `messages[0].role`).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_json(parse_json(body)?)
}

/// The body as a JSON object, or a 400.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; send a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    Ok(value)
}

/// `T` from a JSON object, or a 400 naming the field.
pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let top = path
            .split(['.', '['])
            .next()
            .filter(|s| !s.is_empty() && *s != "?");
        match top {
            Some(field) => ApiError::param(field, format!("invalid `{path}`: {}", e.inner())),
            None => ApiError::invalid(format!("invalid request: {}", e.inner())),
        }
    })
}

/// A chat request with its sampling fields. (They are parsed on their own: serde's `flatten`
/// would lose the name of a field with a wrong type.)
pub fn parse_chat(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let value = parse_json(body)?;
    let mut req: ChatCompletionRequest = from_json(value.clone())?;
    req.sampling = from_json(value)?;
    Ok(req)
}

/// A completion request with its sampling fields.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let value = parse_json(body)?;
    let mut req: CompletionRequest = from_json(value.clone())?;
    req.sampling = from_json(value)?;
    Ok(req)
}

/// `stop`: one string or a list of strings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by both endpoints.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// Kept as JSON: [`chat::tools::ChatMessage`](crate::chat::tools::ChatMessage) reads them.
    pub messages: Vec<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip)]
    pub sampling: SamplingFields,
    /// Qwen-1 / legacy OpenAI function calling: answered with `function_call`.
    #[serde(default)]
    pub functions: Option<Vec<Value>>,
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Current OpenAI function calling: answered with `tool_calls`.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<bool>,
}

/// `prompt`: a string, a list of one string, or token ids.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptField,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub best_of: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TokenizeRequest {
    pub content: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// Server-wide limits the validation enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest `max_tokens` a request may ask for (and the default when it asks for none).
    pub max_tokens: usize,
    /// Most stop strings per request, and their longest length in bytes.
    pub max_stops: usize,
    pub max_stop_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens: 2048,
            max_stops: 16,
            max_stop_len: 256,
        }
    }
}

/// Sampling settings after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub params: SamplingParams,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `None`: as many as the context allows, up to [`Limits::max_tokens`].
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
}

/// Defaults when a request names no value: Qwen's recommended chat sampling (the CLI's
/// defaults), not OpenAI's temperature 1.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_TOP_P: f32 = 0.8;
pub const DEFAULT_TOP_K: usize = 20;

impl SamplingFields {
    /// Checks every field and builds the sampler settings. `seed_fallback` seeds requests that
    /// give none.
    pub fn validate(&self, limits: &Limits, seed_fallback: u64) -> Result<Sampling, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::param(
                    "n",
                    "only n = 1 is supported; send several requests instead",
                ));
            }
        }
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(DEFAULT_TOP_P);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match self.top_k {
            None => DEFAULT_TOP_K,
            Some(k) if k <= 0 => 0,
            Some(k) => k.min(1 << 20) as usize,
        };
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
            return Err(ApiError::param(
                "repetition_penalty",
                format!("repetition_penalty must be in (0, 10], got {repetition_penalty}"),
            ));
        }
        let penalty = |name: &str, v: Option<f32>| -> Result<f32, ApiError> {
            let v = v.unwrap_or(0.0);
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::param(
                    name,
                    format!("{name} must be between -2 and 2, got {v}"),
                ));
            }
            Ok(v)
        };
        let presence_penalty = penalty("presence_penalty", self.presence_penalty)?;
        let frequency_penalty = penalty("frequency_penalty", self.frequency_penalty)?;
        let (field, requested) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        let max_tokens = match requested {
            None => None,
            Some(m) if m < 1 => {
                return Err(ApiError::param(
                    field,
                    format!("{field} must be at least 1, got {m}"),
                ))
            }
            Some(m) if m as u64 > limits.max_tokens as u64 => {
                return Err(ApiError::param(
                    field,
                    format!(
                        "{field} is {m}, more than this server's limit of {}",
                        limits.max_tokens
                    ),
                ))
            }
            Some(m) => Some(m as usize),
        };
        let stop = self
            .stop
            .clone()
            .map(StopField::into_vec)
            .unwrap_or_default();
        if stop.len() > limits.max_stops {
            return Err(ApiError::param(
                "stop",
                format!("at most {} stop strings are allowed", limits.max_stops),
            ));
        }
        if let Some(s) = stop.iter().find(|s| s.len() > limits.max_stop_len) {
            return Err(ApiError::param(
                "stop",
                format!(
                    "a stop string is {} bytes long; the limit is {}",
                    s.len(),
                    limits.max_stop_len
                ),
            ));
        }
        Ok(Sampling {
            params: SamplingParams {
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                seed: self.seed.map(|s| s as u64).unwrap_or(seed_fallback),
            },
            presence_penalty,
            frequency_penalty,
            max_tokens,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }
}

/// Which function-calling API a request speaks (the answer follows it; the prompt format
/// follows the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// No functions offered (or `tool_choice` / `function_call` is `"none"`).
    None,
    /// `functions` → `message.function_call`, finish_reason `function_call`.
    Functions,
    /// `tools` → `message.tool_calls`, finish_reason `tool_calls`.
    Tools,
}

impl ChatCompletionRequest {
    /// The messages, checked: a known role each, text content, well-formed calls.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::param(
                "messages",
                "`messages` is empty; send at least one message",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                ChatMessage::from_value(m).map_err(|e| {
                    ApiError::param("messages", format!("messages[{i}]: {}", plain(&e)))
                })
            })
            .collect()
    }

    /// The functions offered and the dialect of the answer. `tools` wins over `functions`
    /// when both are given; `"none"` as `tool_choice` / `function_call` offers none.
    pub fn functions(&self) -> Result<(Vec<FunctionSpec>, Dialect), ApiError> {
        let (field, list, dialect, choice) = match (&self.tools, &self.functions) {
            (Some(t), _) => ("tools", t, Dialect::Tools, &self.tool_choice),
            (None, Some(f)) => ("functions", f, Dialect::Functions, &self.function_call),
            (None, None) => return Ok((Vec::new(), Dialect::None)),
        };
        let specs = list
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FunctionSpec::from_value(f)
                    .map_err(|e| ApiError::param(field, format!("{field}[{i}]: {}", plain(&e))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let choice_field = if dialect == Dialect::Tools {
            "tool_choice"
        } else {
            "function_call"
        };
        match choice {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" => return Ok((Vec::new(), Dialect::None)),
            Some(Value::String(s)) if s == "auto" => {}
            Some(other) => {
                return Err(ApiError::param(
                    choice_field,
                    format!("{choice_field} {other} is not supported (only \"auto\" or \"none\")"),
                ))
            }
        }
        if specs.is_empty() {
            return Ok((specs, Dialect::None));
        }
        Ok((specs, dialect))
    }

    /// Checks what the sampling validation does not.
    pub fn validate_extras(&self) -> Result<(), ApiError> {
        if self.logprobs == Some(true) {
            return Err(ApiError::param("logprobs", "logprobs are not supported"));
        }
        Ok(())
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

/// A library error's message without its "invalid argument: " prefix.
fn plain(e: &crate::Error) -> String {
    match e {
        crate::Error::InvalidArgument(m) => m.clone(),
        other => other.to_string(),
    }
}

impl CompletionRequest {
    pub fn validate_extras(&self) -> Result<(), ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::param("echo", "echo is not supported"));
        }
        if self.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::param("logprobs", "logprobs are not supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::param(
                "suffix",
                "suffix (insertion) is not supported",
            ));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::param("best_of", "only best_of = 1 is supported"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// How much of the prompt came from the cache (an earlier request with the same prefix).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatCompletionRequest, ApiError> {
        let r = parse_chat(body.as_bytes())?;
        r.messages()?;
        r.functions()?;
        r.validate_extras()?;
        r.sampling.validate(&Limits::default(), 1)?;
        Ok(r)
    }

    #[test]
    fn accepts_a_plain_request() {
        let r = chat(r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"stop":"\n"}"#)
            .unwrap();
        assert_eq!(r.messages().unwrap()[0].content, "hi");
        assert_eq!(r.sampling.stop, Some(StopField::One("\n".into())));
        let s = r.sampling.validate(&Limits::default(), 9).unwrap();
        assert_eq!(s.params.seed, 9);
        assert_eq!(s.params.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(s.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn content_parts_are_joined() {
        let r = chat(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap()[0].content, "a\nb");
        let e =
            chat(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn malformed_json_is_a_400() {
        for body in ["", "{", "[1]", "{\"messages\": [}", "null"] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.kind, "invalid_request_error");
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = chat(r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#)
            .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("temperature")));
        let e = chat(r#"{"messages":"hello"}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages")));
        let e =
            chat(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("max_tokens")));
        let e = chat(r#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn roles_and_empty_messages() {
        let e = chat(r#"{"messages":[]}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages")));
        let e = chat(r#"{"messages":[{"role":"wizard","content":"x"}]}"#).unwrap_err();
        assert!(e.message.contains("wizard"), "{}", e.message);
        for role in ["system", "user", "assistant", "function", "tool"] {
            let body = format!(r#"{{"messages":[{{"role":"{role}","content":"x"}}]}}"#);
            chat(&body).unwrap();
        }
    }

    #[test]
    fn function_dialects() {
        let msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        let f = r#"{"name":"f","description":"d","parameters":{"type":"object"}}"#;
        let r = chat(&format!("{{{msgs},\"functions\":[{f}]}}")).unwrap();
        let (specs, d) = r.functions().unwrap();
        assert_eq!((specs.len(), d), (1, Dialect::Functions));
        let r = chat(&format!(
            "{{{msgs},\"tools\":[{{\"type\":\"function\",\"function\":{f}}}]}}"
        ))
        .unwrap();
        assert_eq!(r.functions().unwrap().1, Dialect::Tools);
        let r = chat(&format!(
            "{{{msgs},\"tools\":[{{\"type\":\"function\",\"function\":{f}}}],\"tool_choice\":\"none\"}}"
        ))
        .unwrap();
        assert_eq!(r.functions().unwrap(), (vec![], Dialect::None));
        assert_eq!(
            chat(&format!("{{{msgs}}}")).unwrap().functions().unwrap().1,
            Dialect::None
        );
        for bad in [
            format!("{{{msgs},\"tools\":[{{\"type\":\"retrieval\"}}]}}"),
            format!("{{{msgs},\"functions\":[{{\"description\":\"no name\"}}]}}"),
            format!("{{{msgs},\"functions\":[{f}],\"function_call\":{{\"name\":\"f\"}}}}"),
        ] {
            let e = chat(&bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.param.is_some(), "{bad}");
        }
        // Calls and results in the history are understood.
        chat(
            r#"{"messages":[{"role":"user","content":"x"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"42"}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn ranges_are_checked() {
        let base = r#"{"messages":[{"role":"user","content":"x"}],"#;
        for (field, bad) in [
            ("temperature", "2.5"),
            ("temperature", "-1"),
            ("top_p", "0"),
            ("top_p", "1.5"),
            ("max_tokens", "0"),
            ("max_tokens", "100000"),
            ("presence_penalty", "3"),
            ("frequency_penalty", "-2.5"),
            ("repetition_penalty", "0"),
            ("n", "2"),
        ] {
            let e = chat(&format!("{base}\"{field}\":{bad}}}")).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(field)),
                "{field}={bad}"
            );
        }
        let stops: Vec<String> = (0..17).map(|i| format!("\"s{i}\"")).collect();
        let e = chat(&format!("{base}\"stop\":[{}]}}", stops.join(","))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        let r = chat(&format!(
            "{base}\"max_tokens\":5,\"top_k\":-1,\"seed\":-3}}"
        ))
        .unwrap();
        let s = r.sampling.validate(&Limits::default(), 0).unwrap();
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.params.top_k, 0);
        assert_eq!(s.params.seed, (-3i64) as u64);
    }

    #[test]
    fn error_json_has_openais_shape() {
        let e = ApiError::param("stop", "bad");
        let v = e.to_json();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "stop");
        assert!(v["error"]["code"].is_null());
        let o = ApiError::overloaded();
        assert_eq!((o.status, o.retry_after), (503, Some(1)));
        assert_eq!(ApiError::unauthorized().status, 401);
        assert_eq!(
            ApiError::context_overflow("x").to_json()["error"]["code"],
            "context_length_exceeded"
        );
    }

    #[test]
    fn completion_prompts() {
        let r = parse_completion(br#"{"prompt":"abc"}"#).unwrap();
        assert_eq!(r.prompt, PromptField::Text("abc".into()));
        let r = parse_completion(br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(r.prompt, PromptField::Ids(vec![1, 2, 3]));
        let r = parse_completion(br#"{"prompt":"x","echo":true,"temperature":0}"#).unwrap();
        assert_eq!(r.sampling.temperature, Some(0.0));
        assert_eq!(
            r.validate_extras().unwrap_err().param.as_deref(),
            Some("echo")
        );
    }
}
