//! Routes, authentication, CORS and limits: the HTTP face of the scheduler.
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions` (streaming or not), `GET /v1/models`;
//! - `POST /tokenize`, `POST /detokenize` (text is always encoded as plain text);
//! - `GET /health` (slot and queue counts; never needs the key);
//! - `GET /` the chat page, its script and style (embedded in the binary).
//!
//! Every error is OpenAI's error JSON with the matching status.

use super::api::{
    parse_body, parse_chat, parse_completion, ApiError, DetokenizeRequest, Dialect, Limits,
    PromptField, Sampling, TokenizeRequest, Usage,
};
use super::prompt::{chat_prompt, message_json, tool_calls_json, ToolStream};
use super::scheduler::{
    EngineError, Event, Finished, GenRequest, Scheduler, StopReason, SubmitError,
};
use super::sse::{frame, SseStream};
use crate::chat::tools::ToolChat;
use crate::chat::ChatTokens;
use crate::tokenizer::{EncodeMode, Tokenizer};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Everything a handler needs.
pub struct AppState {
    pub scheduler: Scheduler,
    /// The name `/v1/models` lists and responses carry.
    pub model_id: String,
    pub limits: Limits,
    pub api_key: Option<String>,
    /// Per-request limit, queueing included.
    pub timeout: Duration,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Origins allowed to call the API from a browser; empty = same origin only, `*` = any.
    pub cors_origins: Vec<String>,
    /// Print one line per finished request on stderr.
    pub log_requests: bool,
    /// The model's chat and tool-use format.
    tools: ToolChat,
    ct: ChatTokens,
    started: u64,
    counter: AtomicU64,
}

impl AppState {
    pub fn new(scheduler: Scheduler, model_id: String) -> crate::Result<AppState> {
        let tools = ToolChat::for_model(scheduler.model())?;
        let ct = *tools.chat_tokens();
        let started = unix_time();
        Ok(AppState {
            scheduler,
            model_id,
            limits: Limits::default(),
            api_key: None,
            timeout: Duration::from_secs(600),
            max_body: 1 << 20,
            cors_origins: Vec::new(),
            log_requests: false,
            tools,
            ct,
            started,
            counter: AtomicU64::new(0),
        })
    }

    fn tokenizer(&self) -> &Tokenizer {
        self.scheduler
            .model()
            .tokenizer
            .as_ref()
            .expect("checked in AppState::new")
    }

    /// A response id (`prefix-` and 24 hex digits, unique in this process) and a seed for
    /// requests that give none.
    fn next_id(&self, prefix: &str) -> (String, u64) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = crate::sampler::Rng::new(nanos ^ n.rotate_left(32) ^ self.started);
        let r = rng.next_u64();
        (format!("{prefix}-{:08x}{r:016x}", n as u32), rng.next_u64())
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.to_json())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The application: routes, the API-key check, the body limit and CORS.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_info))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    let app = Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body));
    let app = match cors_layer(&state.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any)
            .max_age(Duration::from_secs(3600)),
    )
}

/// Byte-wise comparison that takes the same time wherever the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// The body, or a 413 / 400 error JSON.
fn body_bytes(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(st.max_body)
        } else {
            ApiError::invalid(format!(
                "could not read the request body: {}",
                rej.body_text()
            ))
        }
    })
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: 405,
        code: Some("method_not_allowed"),
        ..ApiError::invalid(format!(
            "{} is not allowed on {}",
            req.method(),
            req.uri().path()
        ))
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = st.scheduler.stats();
    axum::Json(json!({
        "status": "ok",
        "model": st.model_id,
        "slots_total": s.slots,
        "slots_active": s.active,
        "slots_idle": s.slots - s.active,
        "queue": s.queued,
        "requests_completed": s.completed,
        "requests_cancelled": s.cancelled,
        "tokens_generated": s.generated_tokens,
        "prompt_tokens_reused": s.reused_tokens,
        "decode_steps": s.decode_steps,
        "decode_rows": s.decode_rows,
        "n_ctx": st.scheduler.n_ctx(),
    }))
    .into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_id,
        "object": "model",
        "created": st.started,
        "owned_by": "libqwen",
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(&st)]})).into_response()
}

async fn model_info(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    if id != st.model_id {
        return Err(ApiError::not_found(format!(
            "the model `{id}` does not exist; this server has `{}`",
            st.model_id
        )));
    }
    Ok(axum::Json(model_object(&st)).into_response())
}

async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&st, body)?;
    let req: TokenizeRequest = parse_body(&body)?;
    let ids = st.tokenizer().encode(&req.content, EncodeMode::Text);
    Ok(axum::Json(json!({ "tokens": ids })).into_response())
}

async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&st, body)?;
    let req: DetokenizeRequest = parse_body(&body)?;
    let n_vocab = st.scheduler.model().config.n_vocab;
    let mut ids = Vec::with_capacity(req.tokens.len());
    for &t in &req.tokens {
        if t < 0 || t as u64 >= n_vocab as u64 {
            return Err(ApiError::param(
                "tokens",
                format!("token id {t} is outside the vocabulary (size {n_vocab})"),
            ));
        }
        ids.push(t as u32);
    }
    Ok(axum::Json(json!({ "content": st.tokenizer().decode(&ids) })).into_response())
}

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// The page loads nothing from elsewhere; the policy makes the browser enforce that.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn finish_reason(f: &Finished) -> &'static str {
    match f.reason {
        StopReason::Stop => "stop",
        StopReason::Length => "length",
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Timeout => ApiError::timeout(),
        EngineError::Shutdown => ApiError::unavailable("the server is shutting down"),
        EngineError::Internal(m) => ApiError::internal(m),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull => ApiError::overloaded(),
        SubmitError::Invalid(m) => ApiError::invalid(m),
        SubmitError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
    }
}

/// What one generation runs: prompt ids and what ends the answer.
struct ChatPrompt {
    ids: Vec<u32>,
    stop_tokens: Vec<u32>,
    stop_strings: Vec<String>,
}

/// Queues a generation of `prompt` and returns its event receiver.
fn submit(
    st: &AppState,
    prompt: ChatPrompt,
    sampling: &Sampling,
    param: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Event>, ApiError> {
    let n_ctx = st.scheduler.n_ctx();
    if prompt.ids.len() >= n_ctx {
        return Err(ApiError {
            param: Some(param.into()),
            ..ApiError::context_overflow(format!(
                "the prompt has {} tokens; this server's context holds {n_ctx} tokens per \
                 request and the answer needs at least one more",
                prompt.ids.len()
            ))
        });
    }
    // Generation stops at the context's end (finish_reason "length").
    let room = n_ctx - prompt.ids.len();
    let max_tokens = sampling
        .max_tokens
        .unwrap_or(st.limits.max_tokens)
        .min(room);
    // The caller put the request's stop strings into the prompt's.
    let stop_strings = prompt.stop_strings;
    let req = GenRequest {
        prompt: prompt.ids,
        sampling: sampling.params.clone(),
        presence_penalty: sampling.presence_penalty,
        frequency_penalty: sampling.frequency_penalty,
        max_tokens,
        stop_tokens: prompt.stop_tokens,
        stop_strings,
        deadline: Some(Instant::now() + st.timeout),
    };
    st.scheduler.submit(req).map_err(submit_error)
}

/// Waits for the whole answer.
async fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<(String, Finished), ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(f)) => return Ok((text, f)),
            Some(Event::Error(e)) => return Err(engine_error(e)),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
}

fn log_done(st: &AppState, id: &str, f: &Finished) {
    if st.log_requests {
        let gen_secs = (f.elapsed - f.time_to_first_token).as_secs_f64();
        eprintln!(
            "{id}: prompt {} tokens ({} cached), {} generated ({}), first token after {:.2} s, \
             {:.1} tokens/s",
            f.prompt_tokens,
            f.cached_tokens,
            f.token_ids.len(),
            finish_reason(f),
            f.time_to_first_token.as_secs_f64(),
            f.token_ids.len().saturating_sub(1) as f64 / gen_secs.max(1e-9)
        );
    }
}

fn sse_response(stream: SseStream) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&st, body)?;
    let req = parse_chat(&body)?;
    req.validate_extras()?;
    let (id, seed) = st.next_id("chatcmpl");
    let sampling = req.sampling.validate(&st.limits, seed)?;
    let plan = chat_prompt(&st.tools, st.tokenizer(), &req, &sampling.stop)?;
    let prompt_tokens = plan.prompt.ids.len();
    let prompt = ChatPrompt {
        ids: plan.prompt.ids.clone(),
        stop_tokens: st.ct.stop_tokens().to_vec(),
        // The format's stop strings (ReAct: `Observation:`) and the request's.
        stop_strings: plan.prompt.stop_strings.clone(),
    };
    let rx = submit(&st, prompt, &sampling, "messages")?;
    let created = unix_time();
    let model = st.model_id.clone();
    if !req.is_stream() {
        let (text, f) = collect(rx).await?;
        log_done(&st, &id, &f);
        let reply = plan.parse(&st.tools, &text, f.stop_string.is_some());
        let (message, finish) = message_json(plan.dialect, &reply, &id);
        return Ok(axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish.unwrap_or(finish_reason(&f)),
            }],
            "usage": Usage::new(prompt_tokens, f.token_ids.len(), f.cached_tokens),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Option<&str>| {
            frame(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            }))
        }
    };
    let first = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let st2 = Arc::clone(&st);
    let mut content = ToolStream::new(&plan);
    let mut text = String::new();
    let translate = Box::new(move |ev: Event, out: &mut Vec<String>| match ev {
        Event::Text(t) => {
            if plan.dialect != Dialect::None {
                text.push_str(&t);
            }
            if let Some(c) = content.push(&t) {
                out.push(chunk(json!({ "content": c }), None));
            }
            false
        }
        Event::Done(f) => {
            log_done(&st2, &id, &f);
            let reply = plan.parse(&st2.tools, &text, f.stop_string.is_some());
            let rest = content.finish(&reply);
            if !rest.is_empty() {
                out.push(chunk(json!({ "content": rest }), None));
            }
            let (message, finish) = message_json(plan.dialect, &reply, &id);
            if message.get("tool_calls").is_some() {
                // Each call whole in one delta (clients concatenate argument pieces).
                let calls = tool_calls_json(&id, &reply.tool_calls, true);
                out.push(chunk(json!({ "tool_calls": calls }), None));
            }
            if let Some(call) = message.get("function_call") {
                out.push(chunk(json!({ "function_call": call }), None));
            }
            out.push(chunk(json!({}), Some(finish.unwrap_or(finish_reason(&f)))));
            if include_usage {
                out.push(frame(&json!({
                    "id": id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": Usage::new(f.prompt_tokens, f.token_ids.len(), f.cached_tokens),
                })));
            }
            true
        }
        Event::Error(e) => {
            out.push(frame(&engine_error(e).to_json()));
            true
        }
    });
    Ok(sse_response(SseStream::new(rx, first, translate)))
}

/// The prompt ids of `/v1/completions`: text is encoded as plain text (control-token strings
/// stay text); ids pass through (they are checked against the vocabulary).
fn completion_prompt(tok: &Tokenizer, prompt: &PromptField) -> Result<Vec<u32>, ApiError> {
    let one = "send one prompt per request";
    let ids = match prompt {
        PromptField::Text(s) => tok.encode(s, EncodeMode::Text),
        PromptField::Texts(v) if v.len() == 1 => tok.encode(&v[0], EncodeMode::Text),
        PromptField::Ids(ids) => ids.clone(),
        PromptField::IdLists(v) if v.len() == 1 => v[0].clone(),
        _ => return Err(ApiError::param("prompt", one)),
    };
    if ids.is_empty() {
        return Err(ApiError::param("prompt", "the prompt is empty"));
    }
    Ok(ids)
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&st, body)?;
    let req = parse_completion(&body)?;
    req.validate_extras()?;
    let (id, seed) = st.next_id("cmpl");
    let sampling = req.sampling.validate(&st.limits, seed)?;
    let ids = completion_prompt(st.tokenizer(), &req.prompt)?;
    let n_vocab = st.scheduler.model().config.n_vocab;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::param(
            "prompt",
            format!("token id {bad} is outside the vocabulary (size {n_vocab})"),
        ));
    }
    let prompt_tokens = ids.len();
    let prompt = ChatPrompt {
        ids,
        stop_tokens: st.ct.stop_tokens().to_vec(),
        stop_strings: sampling.stop.clone(),
    };
    let rx = submit(&st, prompt, &sampling, "prompt")?;
    let created = unix_time();
    let model = st.model_id.clone();
    if !req.stream.unwrap_or(false) {
        let (text, f) = collect(rx).await?;
        log_done(&st, &id, &f);
        return Ok(axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(&f),
            }],
            "usage": Usage::new(prompt_tokens, f.token_ids.len(), f.cached_tokens),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |text: &str, finish: Option<&str>| {
            frame(&json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            }))
        }
    };
    let st2 = Arc::clone(&st);
    let translate = Box::new(move |ev: Event, out: &mut Vec<String>| match ev {
        Event::Text(t) => {
            out.push(chunk(&t, None));
            false
        }
        Event::Done(f) => {
            log_done(&st2, &id, &f);
            out.push(chunk("", Some(finish_reason(&f))));
            if include_usage {
                out.push(frame(&json!({
                    "id": id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": Usage::new(f.prompt_tokens, f.token_ids.len(), f.cached_tokens),
                })));
            }
            true
        }
        Event::Error(e) => {
            out.push(frame(&engine_error(e).to_json()));
            true
        }
    });
    Ok(sse_response(SseStream::new(rx, Vec::new(), translate)))
}
