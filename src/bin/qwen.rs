//! `qwen`: the command line over the libqwen API (run, chat, serve, tokenize, logits, info).

#[path = "qwen/tools.rs"]
mod tools;

use clap::{Args, Parser, Subcommand};
use qwen::chat::{
    generate_text, ChatSession, ChatTokens, Conversation, GenerateOptions, StopMatcher,
    DEFAULT_MAX_WINDOW_SIZE, DEFAULT_SYSTEM_PROMPT,
};
use qwen::kv_cache::KvCacheType;
use qwen::model::Model;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::session::{FinishReason, Session, SessionOptions, SessionParams, SessionState};
use qwen::tokenizer::{EncodeMode, StreamDecoder, Tokenizer};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "qwen",
    version,
    about = "Run Qwen language models from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

// Parsed once per process: the size difference between the commands' arguments costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Complete a prompt (or answer one chat turn with --chat).
    Run(RunArgs),
    /// Interactive multi-turn chat (one user turn per line when stdin is piped).
    Chat(ChatArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(TokenizeArgs),
    /// Print the logits after a sequence of token ids as JSON.
    Logits(LogitsArgs),
    /// Print the architecture, hyperparameters and tensors of a model file.
    Info(InfoArgs),
    /// Perplexity of a text file, computed like llama.cpp's llama-perplexity.
    Perplexity(PerplexityArgs),
    /// Measure prefill and decode speed (like llama-bench).
    Bench(BenchArgs),
    /// OpenAI-compatible HTTP server with continuous batching and a web chat page.
    #[cfg(feature = "server")]
    Serve(qwen::server::ServeArgs),
}

#[derive(Args)]
struct PerplexityArgs {
    /// The window length is -c (default 512 here, as llama-perplexity).
    #[command(flatten)]
    model: ModelArgs,
    /// The text file.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Print `{"ppl": .., "chunks": ..}` instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Prompt tokens per prefill run (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens per decode run (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "reps", default_value_t = 5)]
    reps: usize,
    /// Tokens already in the cache before each run (llama-bench's -d): long-context speed.
    #[arg(short = 'd', long = "depth", default_value_t = 0)]
    depth: usize,
    /// KV cache storage: f32, f16 or q8 (default: as the other commands, f16 for a quantized
    /// model, as llama.cpp).
    #[arg(long = "kv-cache")]
    kv_cache: Option<String>,
    /// Decode steps hand back only the greedy token (on a GPU its argmax is taken on the
    /// device: 4 bytes back instead of the logits), to measure what copying the logits costs.
    #[arg(long = "greedy-step")]
    greedy_step: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    rope: RopeArgs,
    #[command(flatten)]
    gpu: qwen::backend::BackendArgs,
}

#[derive(Args)]
struct ModelArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Worker threads (default: physical cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Context length in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx: usize,
    /// Qwen-1: turn dynamic NTK RoPE scaling off.
    #[arg(long)]
    no_dynamic_ntk: bool,
    /// Qwen-1: turn logN attention scaling off.
    #[arg(long)]
    no_logn: bool,
    /// KV cache storage: f32, f16 or q8 (int8 rows with a scale). Default: f32 for an all-F32
    /// model file (exact), f16 otherwise.
    #[arg(long = "kv-cache")]
    kv_cache: Option<String>,
    #[command(flatten)]
    rope: RopeArgs,
    #[command(flatten)]
    gpu: qwen::backend::BackendArgs,
}

/// RoPE scaling overrides (for a model whose file does not ask for the scaling it needs).
#[derive(Args)]
struct RopeArgs {
    /// RoPE scaling instead of the file's: yarn, linear or none. Qwen2.5 documents
    /// `--rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 32768` for contexts past 32K.
    #[arg(long = "rope-scaling")]
    rope_scaling: Option<String>,
    /// Scaling factor for --rope-scaling (how many times the original context to reach).
    #[arg(long = "rope-scale", requires = "rope_scaling")]
    rope_scale: Option<f64>,
    /// YaRN: the context length the model was trained with (default: the file's
    /// rope.scaling.original_context_length, else its context_length).
    #[arg(long = "yarn-orig-ctx", requires = "rope_scaling")]
    yarn_orig_ctx: Option<usize>,
}

impl RopeArgs {
    /// Replaces the model's RoPE scaling when --rope-scaling is given.
    fn apply(&self, config: &mut qwen::model::ModelConfig) -> Result<(), qwen::Error> {
        use qwen::model::RopeScaling;
        let Some(kind) = &self.rope_scaling else {
            return Ok(());
        };
        let kind = kind.to_ascii_lowercase();
        let (file_factor, file_orig) = match &config.rope_scaling {
            RopeScaling::Yarn(y) => (Some(y.factor), Some(y.original_context)),
            RopeScaling::Linear { factor } => (Some(*factor), None),
            RopeScaling::None => (None, None),
        };
        let factor = match (self.rope_scale, file_factor) {
            (Some(f), _) => f,
            (None, Some(f)) if kind != "none" => f,
            (None, _) if kind == "none" => 1.0,
            (None, _) => {
                return Err(qwen::Error::InvalidArgument(format!(
                    "--rope-scaling {kind} needs --rope-scale (the file has no factor)"
                )))
            }
        };
        let orig = self
            .yarn_orig_ctx
            .or(file_orig)
            .unwrap_or(config.n_ctx_train);
        config.rope_scaling = RopeScaling::from_parts(&kind, factor, orig)?;
        config.check_rope()
    }
}

#[derive(Args)]
struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.7)]
    temp: f32,
    #[arg(long = "top-p", default_value_t = 0.8)]
    top_p: f32,
    /// 0 = off.
    #[arg(long = "top-k", default_value_t = 20)]
    top_k: usize,
    /// 1.0 = off.
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: from the clock).
    #[arg(long = "seed")]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> Result<SamplingParams, String> {
        if !(self.temp >= 0.0 && self.temp.is_finite()) {
            return Err(format!(
                "--temp must be a finite number >= 0, got {}",
                self.temp
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "--repeat-penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(SamplingParams {
            temperature: self.temp,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repeat_penalty,
            seed,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(
        short = 'p',
        long = "prompt",
        required_unless_present_any = ["batch_file", "messages", "load_session"],
        conflicts_with = "batch_file",
        default_value = ""
    )]
    prompt: String,
    /// Run every line of this file as its own prompt, all sequences decoded together (one
    /// forward pass per step); prints one result per prompt (JSON lines with --json).
    #[arg(long = "batch-file", conflicts_with = "history")]
    batch_file: Option<PathBuf>,
    /// With --batch-file: most sequences decoded together (the rest wait for a free slot).
    #[arg(long = "parallel", default_value_t = 16)]
    parallel: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Treat the prompt as one user turn of a ChatML conversation.
    #[arg(long)]
    chat: bool,
    /// System prompt for --chat (with --load-session, the saved conversation's is kept).
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system: String,
    /// Earlier turns for --chat: a JSON file `[["user", "assistant"], ...]`.
    #[arg(long, requires = "chat")]
    history: Option<PathBuf>,
    /// --chat: keep history turns (newest first) while the context stays below N tokens.
    #[arg(long, default_value_t = DEFAULT_MAX_WINDOW_SIZE, requires = "chat")]
    max_window_size: usize,
    /// Stop before this string (may be given several times); it never appears in the output.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// --chat: functions the model may call (OpenAI `functions` or `tools` JSON); the reply is
    /// parsed into content and tool calls. With -n 0 the prompt is printed instead (with
    /// --json: its text, ids and stop strings).
    #[arg(long, requires = "chat", conflicts_with_all = ["batch_file", "history"])]
    tools: Option<PathBuf>,
    /// With --tools: the conversation as an OpenAI message list, results of calls included
    /// (instead of -p and --system).
    #[arg(long, requires = "tools", conflicts_with = "prompt")]
    messages: Option<PathBuf>,
    /// With --tools: `react` (Qwen-1) or `qwen25` (`<tool_call>`); default: from the model.
    #[arg(long = "tool-format", requires = "tools")]
    tool_format: Option<String>,
    /// Print one JSON object at the end instead of streaming text. With -n 0 (and no
    /// --save-session) nothing is evaluated: it shows the prompt ids that would be prefilled.
    #[arg(long)]
    json: bool,
    /// After the run, save the session to this file: the prompt and every generated token
    /// (their KV cache, not just their ids), the sampler's random state and, with --chat, the
    /// conversation. With -n 0 the prompt is evaluated and saved without generating.
    #[arg(long = "save-session", conflicts_with = "batch_file")]
    save_session: Option<PathBuf>,
    /// Start from a session saved by --save-session (same model file): -p is appended after
    /// the saved tokens (tokenized on its own; it may be empty to just continue generating),
    /// or with --chat is the next user turn of the saved conversation. The context length and
    /// KV cache type default to the saved session's; the random stream continues unless --seed
    /// names a different seed.
    #[arg(long = "load-session", conflicts_with_all = ["batch_file", "history"])]
    load_session: Option<PathBuf>,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system: String,
    /// Most tokens generated per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
    n_predict: usize,
    /// Keep history turns (newest first) while the context stays below N tokens.
    #[arg(long, default_value_t = DEFAULT_MAX_WINDOW_SIZE)]
    max_window_size: usize,
    /// Stop before this string (may be given several times).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Print no per-turn statistics on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct TokenizeArgs {
    #[arg(
        short = 'm',
        long = "model",
        conflicts_with = "tiktoken",
        required_unless_present = "tiktoken"
    )]
    model: Option<PathBuf>,
    /// A `qwen.tiktoken` file instead of a model.
    #[arg(long)]
    tiktoken: Option<PathBuf>,
    /// Parse control-token strings such as `<|im_start|>` into their ids.
    #[arg(long)]
    special: bool,
    text: String,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Logits at every position instead of the last.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct InfoArgs {
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Run(a) => run(a),
        Command::Chat(a) => chat(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Logits(a) => logits(a),
        Command::Info(a) => info(a),
        Command::Perplexity(a) => perplexity(a),
        Command::Bench(a) => bench(a),
        #[cfg(feature = "server")]
        Command::Serve(a) => qwen::server::run(a).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load(args: &ModelArgs) -> Result<(Arc<Model>, Session), qwen::Error> {
    load_seqs(args, 1)
}

/// Loads the model and a session holding `n_seq` sequences.
fn load_seqs(args: &ModelArgs, n_seq: usize) -> Result<(Arc<Model>, Session), qwen::Error> {
    let model = load_model(args)?;
    let session = new_session(args, &model, n_seq, None)?;
    Ok((model, session))
}

/// Loads the model with the command line's overrides of its settings.
fn load_model(args: &ModelArgs) -> Result<Arc<Model>, qwen::Error> {
    let mut model = Model::load(&args.model)?;
    if args.no_dynamic_ntk {
        model.config.use_dynamic_ntk = false;
    }
    if args.no_logn {
        model.config.use_logn_attn = false;
    }
    args.rope.apply(&mut model.config)?;
    Ok(Arc::new(model))
}

/// A session of `n_seq` sequences. For a saved state about to be restored, the context length
/// and KV cache type default to the state's (-c and --kv-cache still win).
fn new_session(
    args: &ModelArgs,
    model: &Arc<Model>,
    n_seq: usize,
    state: Option<&SessionState>,
) -> Result<Session, qwen::Error> {
    let params = SessionParams {
        n_ctx: match (args.ctx, state) {
            (0, Some(st)) => st.n_ctx(),
            (c, _) => c,
        },
        n_threads: args.threads,
        ..Default::default()
    };
    let opts = SessionOptions {
        kv_cache: match (&args.kv_cache, state) {
            (Some(s), _) => KvCacheType::parse(s)?,
            (None, Some(st)) => st.kv_cache_type(),
            (None, None) => SessionOptions::auto_kv_cache(model),
        },
        n_seq,
        backend: args.gpu.backend,
        device: args.gpu.device,
    };
    Session::with_options(Arc::clone(model), &params, &opts)
}

/// What `qwen run` stores beside the cache in a session file: whether it was a chat, and the
/// conversation (system prompt and finished turns) a chat continues from.
fn session_user_data(chat: Option<&ChatSession>) -> Vec<u8> {
    let json = match chat {
        None => serde_json::json!({"mode": "raw"}),
        Some(c) => {
            let conv = &c.conversation;
            serde_json::json!({
                "mode": "chat",
                "system": conv.system,
                "history": conv.history.iter().map(|t| [&t.user, &t.assistant]).collect::<Vec<_>>(),
            })
        }
    };
    json.to_string().into_bytes()
}

/// The conversation saved by a `--chat` run (`None` for a raw one); an error when the file's
/// mode is not `chat` (`want_chat`) or raw as asked.
fn saved_conversation(
    st: &SessionState,
    path: &std::path::Path,
    want_chat: bool,
) -> Result<Option<Conversation>, String> {
    let bad = |m: &str| format!("{}: {m}", path.display());
    let v: serde_json::Value = serde_json::from_slice(st.user_data())
        .map_err(|_| bad("not a session saved by `qwen run` (no run data)"))?;
    let chat = match v["mode"].as_str() {
        Some("chat") => true,
        Some("raw") => false,
        _ => return Err(bad("not a session saved by `qwen run` (unknown mode)")),
    };
    if chat != want_chat {
        return Err(bad(if chat {
            "saved by a --chat run: load it with --chat"
        } else {
            "saved by a run without --chat: load it without --chat"
        }));
    }
    if !chat {
        return Ok(None);
    }
    let mut conv = Conversation::new(v["system"].as_str().unwrap_or_default());
    conv.history = Conversation::history_from_json(&v["history"].to_string())
        .map_err(|e| bad(&e.to_string()))?;
    Ok(Some(conv))
}

/// Writes streamed text to stdout; a closed stdout (e.g. `| head`) cancels generation instead
/// of failing it.
fn write_piece(out: &mut impl Write, piece: &str) -> bool {
    out.write_all(piece.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

fn run(a: RunArgs) -> CliResult {
    if a.batch_file.is_some() {
        return run_batch(a);
    }
    if let Some(path) = &a.tools {
        return tools::run(&a, path);
    }
    let sampling = a.sampling.params()?;
    let model = load_model(&a.model)?;
    // A saved session: read and checked before the session exists, so the session can take
    // its context length and cache type.
    let saved = match &a.load_session {
        Some(path) => {
            let t = Instant::now();
            let st = SessionState::read_file(&model, path)?;
            Some((st, path.as_path(), t.elapsed()))
        }
        None => None,
    };
    let mut session = new_session(&a.model, &model, 1, saved.as_ref().map(|s| &s.0))?;
    let mut saved_conv = None;
    let mut sampler = Sampler::new(sampling.clone());
    if let Some((st, path, read_time)) = &saved {
        saved_conv = saved_conversation(st, path, a.chat)?;
        let t = Instant::now();
        session.restore_state(st)?;
        let load_time = *read_time + t.elapsed();
        // The random stream continues where the saved run left it, unless --seed asks for
        // another one.
        if let Some(saved_sampler) = st.sampler() {
            let seed = saved_sampler.params.seed;
            if a.sampling.seed.is_none_or(|s| s == seed) {
                let rng = saved_sampler.rng().clone();
                sampler = Sampler::with_rng(SamplingParams { seed, ..sampling }, rng);
            }
        }
        eprintln!(
            "loaded session {}: {} tokens, {} bytes, {:.1} ms",
            path.display(),
            session.tokens().len(),
            st.n_bytes(),
            load_time.as_secs_f64() * 1e3
        );
    }
    drop(saved);
    let tok = model.tokenizer()?;
    let ct = ChatTokens::from_tokenizer(tok)?;
    let mut stdout = std::io::stdout().lock();
    let stream = !a.json;

    // The prompt: one chat turn after the history, or raw text (after the loaded tokens).
    let mut chat = None;
    let mut raw_session = None;
    let (prompt_ids, turns_kept) = if a.chat {
        let conv = match saved_conv {
            Some(conv) => conv,
            None => {
                let mut conv = Conversation::new(a.system.clone());
                if let Some(path) = &a.history {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    conv.history = Conversation::history_from_json(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                conv
            }
        };
        let mut c = ChatSession::new(session, conv)?;
        c.conversation.max_window_size = a.max_window_size;
        c.stop_strings = a.stop.clone();
        let ctx = c.context(&a.prompt, a.n_predict)?;
        chat = Some(c);
        (ctx.ids, Some(ctx.turns_kept))
    } else {
        let ids = tok.encode(&a.prompt, EncodeMode::Trusted);
        let cached = session.tokens().len();
        if cached + ids.len() > session.n_ctx() {
            return Err(format!(
                "the prompt has {} tokens{}, more than the context of {} (-c)",
                ids.len(),
                if cached > 0 {
                    format!(" after {cached} loaded ones")
                } else {
                    String::new()
                },
                session.n_ctx()
            )
            .into());
        }
        if ids.is_empty() && cached == 0 {
            return Err("nothing to complete: give a prompt (-p)".into());
        }
        raw_session = Some(session);
        (ids, None)
    };
    if a.n_predict == 0 && a.save_session.is_none() {
        if a.json {
            let json = serde_json::json!({
                "prompt_ids": prompt_ids,
                "turns_kept": turns_kept,
                "generated_ids": [],
                "text": "",
                "finish_reason": "length",
            });
            writeln!(stdout, "{json}")?;
        }
        return Ok(());
    }

    let t0 = Instant::now();
    let mut on_text = |piece: &str| !stream || write_piece(&mut stdout, piece);
    let (generated, text, finish, prompt_secs, gen_secs) = if let Some(chat) = chat.as_mut() {
        let turn = chat.prefill(&a.prompt, a.n_predict)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        if a.n_predict == 0 {
            // Only the context is wanted (to save it): no reply, no history turn.
            (
                Vec::new(),
                String::new(),
                FinishReason::Length,
                prompt_secs,
                0.0,
            )
        } else {
            let reply = chat.generate(turn, &mut sampler, &mut on_text)?;
            let gen_secs = t1.elapsed().as_secs_f64();
            (
                reply.generated_ids,
                reply.text,
                reply.finish_reason,
                prompt_secs,
                gen_secs,
            )
        }
    } else {
        let session = raw_session.as_mut().expect("set above");
        if !prompt_ids.is_empty() {
            session.eval(&prompt_ids)?;
        }
        let prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let opts = GenerateOptions {
            max_tokens: a.n_predict,
            stop_tokens: ct.stop_tokens().to_vec(),
            stop_strings: a.stop.clone(),
        };
        let gen = generate_text(session, &mut sampler, &opts, &mut on_text)?;
        let gen_secs = t1.elapsed().as_secs_f64();
        (
            gen.token_ids,
            gen.text,
            gen.finish_reason,
            prompt_secs,
            gen_secs,
        )
    };
    if stream {
        let _ = writeln!(stdout);
    } else {
        let json = serde_json::json!({
            "prompt_ids": prompt_ids,
            "turns_kept": turns_kept,
            "generated_ids": generated,
            "text": text,
            "finish_reason": finish.as_str(),
            "prompt_tps": prompt_ids.len() as f64 / prompt_secs.max(1e-9),
            "gen_tps": generated.len().saturating_sub(1) as f64 / gen_secs.max(1e-9),
        });
        writeln!(stdout, "{json}")?;
    }
    if let Some(path) = &a.save_session {
        let user_data = session_user_data(chat.as_ref());
        let session = match (&mut chat, &mut raw_session) {
            (Some(c), _) => c.session_mut(),
            (None, Some(s)) => {
                // The last sampled token is not evaluated by generation; a raw run's cache
                // should hold everything it produced, so a load continues right after it.
                if let Some(&last) = generated.last() {
                    if s.tokens().len() < s.n_ctx() {
                        s.eval(&[last])?;
                    } else {
                        eprintln!(
                            "warning: the context is full; the last generated token is not in \
                             the saved session"
                        );
                    }
                }
                s
            }
            (None, None) => unreachable!("one of them is set"),
        };
        let t = Instant::now();
        let n = session.save_state_file(path, Some(&sampler), &user_data)?;
        eprintln!(
            "saved session {}: {} tokens, {} bytes, {:.1} ms",
            path.display(),
            session.tokens().len(),
            n,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// `qwen run --batch-file`: groups of up to `--parallel` prompts share one session, prefilled
/// one by one and then decoded together. Sequence `i` samples with seed `seed + i`.
fn run_batch(mut a: RunArgs) -> CliResult {
    let path = a.batch_file.clone().expect("checked by the caller");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return Err(format!("{}: no prompts", path.display()).into());
    }
    let sampling = a.sampling.params()?;
    let model = Model::load(&a.model.model)?;
    let tok = model.tokenizer()?;
    let ct = ChatTokens::from_tokenizer(tok)?;
    let prompts: Vec<Vec<u32>> = lines
        .iter()
        .map(|l| {
            if a.chat {
                let conv = Conversation::new(a.system.clone());
                conv.context(tok, &ct, l, usize::MAX).ids
            } else {
                tok.encode(l, EncodeMode::Trusted)
            }
        })
        .collect();
    if a.model.ctx == 0 {
        // Just what the longest prompt and its answer need: each sequence has its own cache.
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        a.model.ctx = (longest + a.n_predict).max(16);
    }
    let n_seq = a.parallel.clamp(1, prompts.len());
    let (model, mut session) = load_seqs(&a.model, n_seq)?;
    let tok = model.tokenizer()?;
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.len() > session.n_ctx())
    {
        return Err(format!(
            "prompt {} has {} tokens, more than the context of {} (-c)",
            i + 1,
            p.len(),
            session.n_ctx()
        )
        .into());
    }
    let mut stdout = std::io::stdout().lock();
    let t0 = Instant::now();
    let mut n_generated = 0;
    for (group_no, group) in prompts.chunks(n_seq).enumerate() {
        let first = group_no * n_seq;
        let mut samplers: Vec<Sampler> = (0..group.len())
            .map(|i| {
                let mut p = sampling.clone();
                p.seed = p.seed.wrapping_add((first + i) as u64);
                Sampler::new(p)
            })
            .collect();
        let mut decoders = vec![StreamDecoder::new(); group.len()];
        let mut matchers = vec![StopMatcher::new(&a.stop); group.len()];
        let mut texts = vec![String::new(); group.len()];
        let mut stopped = vec![false; group.len()];
        let stop_tokens = ct.stop_tokens();
        let results =
            session.generate_batch(group, &mut samplers, a.n_predict, &stop_tokens, |i, id| {
                let piece = decoders[i].push(tok, id);
                stopped[i] = matchers[i].push(&piece, &mut texts[i]);
                !stopped[i]
            })?;
        for (i, (ids, finish)) in results.into_iter().enumerate() {
            if !stopped[i] {
                let rest = decoders[i].finish();
                matchers[i].push(&rest, &mut texts[i]);
                matchers[i].finish(&mut texts[i]);
            }
            n_generated += ids.len();
            let index = first + i;
            if a.json {
                let json = serde_json::json!({
                    "index": index,
                    "prompt": lines[index],
                    "prompt_ids": group[i],
                    "generated_ids": ids,
                    "text": texts[i],
                    "finish_reason": finish.as_str(),
                });
                writeln!(stdout, "{json}")?;
            } else {
                writeln!(stdout, "[{}] {}", index + 1, texts[i])?;
            }
        }
    }
    eprintln!(
        "{} prompts, {} tokens generated in {:.1} s ({} sequences per step, context {}, \
         {} KV cache {:.1} MiB, peak memory {})",
        prompts.len(),
        n_generated,
        t0.elapsed().as_secs_f64(),
        n_seq,
        session.n_ctx(),
        session.kv_cache_type().as_str(),
        session.kv_bytes() as f64 / (1 << 20) as f64,
        peak_rss_mib()
            .map(|m| format!("{m:.1} MiB"))
            .unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// Peak resident memory of this process (`VmHWM`), where the OS reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn chat(a: ChatArgs) -> CliResult {
    let sampling = a.sampling.params()?;
    let (model, session) = load(&a.model)?;
    let mut sampler = Sampler::new(sampling);
    let mut conv = Conversation::new(a.system.clone());
    conv.max_window_size = a.max_window_size;
    let mut chat = ChatSession::new(session, conv)?;
    chat.stop_strings = a.stop.clone();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {} ({} layers). /clear starts over, /exit quits.",
            model.config.arch.name(),
            model.config.n_layer
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn_no = 0;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let query = line.trim_end_matches('\r');
        match query.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/clear" => {
                chat.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        // Only the tokens after the cached prefix are evaluated, so a turn costs what it adds;
        // the window drops the oldest turns when the context fills up.
        let turn = match chat.prefill(query, a.n_predict) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        let mut stdout = std::io::stdout().lock();
        let reply = chat.generate(turn, &mut sampler, |piece| write_piece(&mut stdout, piece))?;
        writeln!(stdout)?;
        turn_no += 1;
        if !a.quiet {
            eprintln!(
                "[turn {turn_no}: prompt {} tokens, {} evaluated, {} reused; {} history turns kept; \
                 {} generated, {}]",
                reply.prompt_tokens,
                reply.prompt_tokens_evaluated,
                reply.prompt_tokens - reply.prompt_tokens_evaluated,
                reply.turns_kept,
                reply.generated_ids.len(),
                reply.finish_reason.as_str()
            );
        }
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> CliResult {
    let mode = if a.special {
        EncodeMode::Trusted
    } else {
        EncodeMode::Text
    };
    let ids = match (&a.model, &a.tiktoken) {
        (_, Some(path)) => Tokenizer::from_tiktoken_file(path)?.encode(&a.text, mode),
        (Some(path), None) => {
            let model = Model::load(path)?;
            model.tokenizer()?.encode(&a.text, mode)
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn logits(a: LogitsArgs) -> CliResult {
    let (model, mut session) = load(&a.model)?;
    let v = model.config.n_vocab;
    let rows: Vec<&[f32]>;
    let all;
    if a.all {
        all = session.eval_all_logits(&a.ids)?;
        rows = all.chunks_exact(v).collect();
    } else {
        rows = vec![session.eval(&a.ids)?];
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Shortest round-trip formatting keeps every f32 exact.
    write!(out, "{{\"logits\":[")?;
    for (i, row) in rows.iter().enumerate() {
        write!(out, "{}[", if i > 0 { "," } else { "" })?;
        for (j, x) in row.iter().enumerate() {
            if j > 0 {
                write!(out, ",")?;
            }
            if x.is_finite() {
                write!(out, "{x:?}")?;
            } else {
                write!(out, "null")?;
            }
        }
        write!(out, "]")?;
    }
    writeln!(out, "]}}")?;
    Ok(())
}

fn perplexity(mut a: PerplexityArgs) -> CliResult {
    if a.model.ctx == 0 {
        a.model.ctx = 512;
    }
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?;
    let (model, mut session) = load(&a.model)?;
    let tokens = model.tokenizer()?.encode(&text, EncodeMode::Text);
    let bos = qwen::perplexity::bos_for_perplexity(&model)?;
    eprintln!(
        "perplexity: {} tokens, {} windows of {} (second half scored){}",
        tokens.len(),
        tokens.len() / session.n_ctx(),
        session.n_ctx(),
        if bos.is_some() { ", BOS added" } else { "" }
    );
    let t0 = Instant::now();
    let r = qwen::perplexity::perplexity(&mut session, &tokens, bos, |i, n, ppl| {
        eprint!("[{}]{ppl:.4},", i + 1);
        if i + 1 == n {
            eprintln!();
        }
    })?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let json = serde_json::json!({
            "ppl": r.ppl,
            "ppl_stderr": r.ppl_stderr,
            "chunks": r.chunks,
            "n_ctx": r.n_ctx,
            "n_tokens": tokens.len(),
            "n_scored": r.n_scored,
            "seconds": secs,
        });
        println!("{json}");
    } else {
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5} ({} windows of {}, {:.1} s)",
            r.ppl, r.ppl_stderr, r.chunks, r.n_ctx, secs
        );
    }
    Ok(())
}

fn info(a: InfoArgs) -> CliResult {
    let model = Model::load(&a.model)?;
    let c = &model.config;
    let f = model.file();
    let mut types = std::collections::BTreeMap::<String, (usize, usize)>::new();
    let tensors: Vec<_> = f
        .tensor_infos()
        .iter()
        .map(|t| {
            let e = types.entry(t.ty.to_string()).or_default();
            e.0 += 1;
            e.1 += t.n_bytes();
            serde_json::json!({"name": t.name, "type": t.ty.to_string(), "dims": t.dims, "bytes": t.n_bytes()})
        })
        .collect();
    let kv_by_type: serde_json::Map<String, serde_json::Value> =
        [KvCacheType::F32, KvCacheType::F16, KvCacheType::Q8]
            .iter()
            .map(|t| {
                let n = t.bytes_per_token(c.n_layer, c.n_head_kv, c.head_dim);
                (t.as_str().to_string(), serde_json::json!(n))
            })
            .collect();
    let json = serde_json::json!({
        "file": a.model,
        "gguf_version": f.version(),
        "architecture": c.arch.name(),
        "name": f.get_opt_str("general.name")?,
        "n_vocab": c.n_vocab,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_head_kv": c.n_head_kv,
        "head_dim": c.head_dim,
        "n_ff": c.n_ff,
        "n_ctx_train": c.n_ctx_train,
        "rope_freq_base": c.rope_base,
        "rms_norm_eps": c.rms_eps,
        "seq_length": c.seq_length,
        "use_dynamic_ntk": c.use_dynamic_ntk,
        "use_logn_attn": c.use_logn_attn,
        "rope_scaling": c.rope_scaling.name(),
        "rope_attn_factor": c.rope_attn_factor(),
        "tokenizer_tokens": model.tokenizer.as_ref().map(|t| t.n_vocab()),
        "n_params": f.tensor_infos().iter().map(|t| t.n_elements()).sum::<usize>(),
        "weight_bytes": f.tensor_infos().iter().map(|t| t.n_bytes()).sum::<usize>(),
        "data_offset": f.data_offset(),
        "file_bytes": f.as_bytes().len(),
        "kv_cache_type_default": SessionOptions::auto_kv_cache(&model).as_str(),
        "kv_cache_bytes_per_token": SessionOptions::auto_kv_cache(&model).bytes_per_token(c.n_layer, c.n_head_kv, c.head_dim),
        "kv_cache_bytes_per_token_by_type": kv_by_type,
        "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), serde_json::json!({"count": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "tensors": tensors,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

fn bench(a: BenchArgs) -> CliResult {
    let params = qwen::bench::BenchParams {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        n_depth: a.depth,
        kv_cache: a.kv_cache.as_deref().map(KvCacheType::parse).transpose()?,
        reps: a.reps,
        n_threads: a.threads,
        backend: a.gpu.backend,
        device: a.gpu.device,
        greedy_step: a.greedy_step,
    };
    let r = qwen::bench::run_with(&a.model, &params, |c| a.rope.apply(c))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model      {}", r.model);
        println!("device     {} ({} kernels)", r.device, r.kernels);
        println!(
            "load       {:.0} ms (+{:.0} ms creating the session)",
            r.load_ms, r.backend_init_ms
        );
        let at = if r.n_depth > 0 {
            format!(" @ d{}", r.n_depth)
        } else {
            String::new()
        };
        println!("kv cache   {}", r.kv_cache);
        if r.n_prompt > 0 {
            println!(
                "prefill    {:.2} ± {:.2} tok/s  (pp{}{at})",
                r.prefill_tps, r.prefill_tps_sd, r.n_prompt
            );
        }
        if r.n_gen > 0 {
            println!(
                "decode     {:.2} ± {:.2} tok/s  (tg{}{at})",
                r.decode_tps, r.decode_tps_sd, r.n_gen
            );
            println!(
                "bandwidth  {:.2} GB/s of weights ({:.1} MB per token); memory reads at {:.2} GB/s",
                r.achieved_bandwidth_gbs,
                r.weight_bytes_per_token as f64 / 1e6,
                r.read_bandwidth_gbs
            );
            if r.bandwidth_bound_tps > 0.0 {
                println!(
                    "bound      {:.2} tok/s if decode only read weights: {:.0}% reached",
                    r.bandwidth_bound_tps,
                    100.0 * r.decode_tps / r.bandwidth_bound_tps
                );
            }
        }
        println!("peak RSS   {:.0} MiB", r.peak_rss_mb);
    }
    Ok(())
}
