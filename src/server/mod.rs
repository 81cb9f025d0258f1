//! `qwen serve`: an OpenAI-compatible HTTP server with continuous batching and a chat page.
//!
//! - [`scheduler`]: the engine thread; one [`Session`](crate::session::Session) whose sequences
//!   are the slots, every live request advanced by one batched forward pass per step;
//! - [`api`]: OpenAI's request/response shapes, validation and error JSON;
//! - [`prompt`]: chat messages → ChatML prompt ids (user text always encoded as plain text);
//! - [`sse`]: streaming in OpenAI's chunk format;
//! - [`http`]: routes, API key, CORS, body limit, the embedded web page (`web/`).
//!
//! Behind the cargo feature `server` (on by default).

pub mod api;
pub mod http;
pub mod prompt;
pub mod scheduler;
pub mod sse;

use crate::error::{Error, Result};
use crate::kv_cache::KvCacheType;
use crate::model::Model;
use crate::session::{Session, SessionOptions, SessionParams};
use scheduler::{Scheduler, SchedulerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The options of `qwen serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Address to listen on (loopback by default: only this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API (also read from $QWEN_API_KEY).
    #[arg(long = "api-key", env = "QWEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests generated at once (slots); each has its own KV cache of -c tokens.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Context length per slot in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx: usize,
    /// KV cache storage: f32, f16 or q8. Default: f32 for an all-F32 model file, f16 otherwise.
    #[arg(long = "kv-cache")]
    pub kv_cache: Option<String>,
    /// Worker threads (default: physical cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    pub threads: usize,
    /// Model name in responses and /v1/models (default: the file name without .gguf).
    #[arg(long)]
    pub alias: Option<String>,
    /// Requests that may wait for a free slot; more get 503 with Retry-After.
    #[arg(long = "queue", default_value_t = 64)]
    pub queue: usize,
    /// Largest max_tokens a request may ask for, and the default.
    #[arg(long = "max-tokens", default_value_t = 2048)]
    pub max_tokens: usize,
    /// Seconds a request may take, waiting in the queue included (fractions allowed).
    #[arg(long = "timeout", default_value_t = 600.0)]
    pub timeout: f64,
    /// Largest request body in bytes.
    #[arg(long = "max-body", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Origin allowed to call the API from a web page (may be given several times; `*` = any).
    /// Without it, browsers allow only the server's own page.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Most prompt tokens evaluated per step while other requests are generating: smaller
    /// keeps running streams smoother, larger starts new requests sooner.
    #[arg(long = "prefill-chunk", default_value_t = 64)]
    pub prefill_chunk: usize,
    /// Print no line per finished request.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub gpu: crate::backend::BackendArgs,
}

/// Loads the model, starts the engine and serves until Ctrl-C / SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.parallel == 0 || args.parallel > 256 {
        return Err(Error::InvalidArgument(format!(
            "--parallel must be 1 to 256, not {}",
            args.parallel
        )));
    }
    if args.max_tokens == 0 || args.queue > 100_000 {
        return Err(Error::InvalidArgument(
            "--max-tokens must be at least 1, --queue at most 100000".into(),
        ));
    }
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--timeout must be a positive number of seconds, not {}",
                args.timeout
            ))
        })?;
    let model = Arc::new(Model::load(&args.model)?);
    let kv_cache = match &args.kv_cache {
        Some(s) => KvCacheType::parse(s)?,
        None => SessionOptions::auto_kv_cache(&model),
    };
    let session = Session::with_options(
        Arc::clone(&model),
        &SessionParams {
            n_ctx: args.ctx,
            n_threads: args.threads,
            max_batch: args.parallel.max(args.prefill_chunk).max(128),
        },
        &SessionOptions {
            kv_cache,
            n_seq: args.parallel,
            backend: args.gpu.backend,
            device: args.gpu.device,
        },
    )?;
    let model_id = args.alias.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "qwen".into())
    });
    eprintln!(
        "qwen serve: {} ({} layers), {} slots of {} tokens, {} KV cache {:.1} MiB, on {}",
        model_id,
        model.config.n_layer,
        session.n_seq(),
        session.n_ctx(),
        session.kv_cache_type().as_str(),
        session.kv_bytes() as f64 / (1 << 20) as f64,
        session.device_name(),
    );
    let scheduler = Scheduler::start(
        session,
        SchedulerConfig {
            max_queue: args.queue,
            prefill_chunk: args.prefill_chunk,
        },
    );
    let mut state = http::AppState::new(scheduler, model_id)?;
    state.limits.max_tokens = args.max_tokens;
    state.api_key = args.api_key.clone().filter(|k| !k.is_empty());
    state.timeout = timeout;
    state.max_body = args.max_body;
    state.cors_origins = args.cors_origins.clone();
    state.log_requests = !args.quiet;
    let state = Arc::new(state);

    // The HTTP side only parses, queues and forwards text; two workers are plenty and leave
    // the cores to the engine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qwen-http")
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("starting the async runtime: {e}")))?;
    rt.block_on(serve(args, state))
}

async fn serve(args: ServeArgs, state: Arc<http::AppState>) -> Result<()> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::InvalidArgument(format!("{addr}: {e}")))?;
    let host = if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    eprintln!("listening on http://{host}:{}", local.port());
    if !local.ip().is_loopback() && state.api_key.is_none() {
        eprintln!("warning: listening beyond this machine without --api-key");
    }
    let app = http::router(Arc::clone(&state));
    let stopping = Arc::clone(&state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down");
            // Ends every running stream so their connections can close.
            stopping.scheduler.shutdown();
        })
        .await
        .map_err(|e| Error::InvalidArgument(format!("server error: {e}")))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
