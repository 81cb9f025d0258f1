//! `qwen`: the command line over the libqwen API (run, chat, tokenize, logits, info).

use clap::{Args, Parser, Subcommand};
use qwen::chat::{make_context, ChatTokens, Turn, DEFAULT_SYSTEM_PROMPT};
use qwen::model::Model;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::session::{Session, SessionParams};
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
    /// Measure prefill and decode speed (like llama-bench).
    Bench(BenchArgs),
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
    #[arg(long)]
    json: bool,
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
    #[arg(short = 'p', long = "prompt")]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Treat the prompt as one user turn of a ChatML conversation.
    #[arg(long)]
    chat: bool,
    /// System prompt for --chat.
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system: String,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
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
        Command::Bench(a) => bench(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load(args: &ModelArgs) -> Result<(Arc<Model>, Session), qwen::Error> {
    let mut model = Model::load(&args.model)?;
    if args.no_dynamic_ntk {
        model.config.use_dynamic_ntk = false;
    }
    if args.no_logn {
        model.config.use_logn_attn = false;
    }
    let model = Arc::new(model);
    let params = SessionParams {
        n_ctx: args.ctx,
        n_threads: args.threads,
        ..Default::default()
    };
    let session = Session::new(Arc::clone(&model), &params)?;
    Ok((model, session))
}

fn run(a: RunArgs) -> CliResult {
    let sampling = a.sampling.params()?;
    let (model, mut session) = load(&a.model)?;
    let tok = model.tokenizer()?;
    let ct = ChatTokens::from_tokenizer(tok)?;
    let prompt_ids = if a.chat {
        make_context(tok, &ct, &a.system, &[], &a.prompt, usize::MAX).ids
    } else {
        tok.encode(&a.prompt, EncodeMode::Trusted)
    };
    let t0 = Instant::now();
    session.eval(&prompt_ids)?;
    let prompt_secs = t0.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(sampling);
    let mut decoder = StreamDecoder::new();
    let mut stdout = std::io::stdout().lock();
    let stream = !a.json;
    let t1 = Instant::now();
    let (generated, finish) =
        session.generate(&mut sampler, a.n_predict, &ct.stop_tokens(), |id| {
            if stream {
                let piece = decoder.push(tok, id);
                // A closed stdout (e.g. `| head`) stops generation instead of failing it.
                return stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_ok();
            }
            true
        })?;
    let gen_secs = t1.elapsed().as_secs_f64();
    let n_text = generated
        .iter()
        .take_while(|t| !ct.stop_tokens().contains(t))
        .count();
    if stream {
        let _ = writeln!(stdout, "{}", decoder.finish());
    } else {
        let json = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": generated,
            "text": tok.decode(&generated[..n_text]),
            "finish_reason": finish.as_str(),
            "prompt_tps": prompt_ids.len() as f64 / prompt_secs.max(1e-9),
            "gen_tps": generated.len().saturating_sub(1) as f64 / gen_secs.max(1e-9),
        });
        writeln!(stdout, "{json}")?;
    }
    Ok(())
}

fn chat(a: ChatArgs) -> CliResult {
    let sampling = a.sampling.params()?;
    let (model, mut session) = load(&a.model)?;
    let tok = model.tokenizer()?;
    let ct = ChatTokens::from_tokenizer(tok)?;
    let mut sampler = Sampler::new(sampling);
    let mut history: Vec<Turn> = Vec::new();
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
                history.clear();
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        // The whole context is rebuilt each turn, but only tokens after the cached prefix are
        // evaluated, so a turn costs what it adds. The window drops old turns when needed.
        let window = session
            .n_ctx()
            .saturating_sub(a.n_predict.min(session.n_ctx() / 2));
        let ctx = make_context(tok, &ct, &a.system, &history, query, window);
        if ctx.ids.len() >= session.n_ctx() {
            eprintln!(
                "error: this message is too long for the context ({} tokens)",
                session.n_ctx()
            );
            continue;
        }
        session.eval_reusing_prefix(&ctx.ids)?;
        let mut decoder = StreamDecoder::new();
        let mut stdout = std::io::stdout().lock();
        let mut reply = String::new();
        let budget = a.n_predict.min(session.n_ctx() - ctx.ids.len());
        session.generate(&mut sampler, budget, &ct.stop_tokens(), |id| {
            let piece = decoder.push(tok, id);
            reply.push_str(&piece);
            stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok()
        })?;
        let rest = decoder.finish();
        reply.push_str(&rest);
        writeln!(stdout, "{rest}")?;
        history.push(Turn {
            user: query.to_string(),
            assistant: reply.trim().to_string(),
        });
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
        "tokenizer_tokens": model.tokenizer.as_ref().map(|t| t.n_vocab()),
        "n_params": f.tensor_infos().iter().map(|t| t.n_elements()).sum::<usize>(),
        "weight_bytes": f.tensor_infos().iter().map(|t| t.n_bytes()).sum::<usize>(),
        "kv_cache_bytes_per_token": 2 * c.n_layer * c.n_head_kv * c.head_dim * 4,
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
        reps: a.reps,
        n_threads: a.threads,
    };
    let r = qwen::bench::run(&a.model, &params)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model      {}", r.model);
        println!("threads    {}", r.n_threads);
        println!("load       {:.0} ms", r.load_ms);
        if r.n_prompt > 0 {
            println!(
                "prefill    {:.2} ± {:.2} tok/s  (pp{})",
                r.prefill_tps, r.prefill_tps_sd, r.n_prompt
            );
        }
        if r.n_gen > 0 {
            println!(
                "decode     {:.2} ± {:.2} tok/s  (tg{})",
                r.decode_tps, r.decode_tps_sd, r.n_gen
            );
            println!(
                "bandwidth  {:.2} GB/s of weights ({:.1} MB per token); memory reads at {:.2} GB/s",
                r.achieved_bandwidth_gbs,
                r.weight_bytes_per_token as f64 / 1e6,
                r.read_bandwidth_gbs
            );
            println!(
                "bound      {:.2} tok/s if decode only read weights: {:.0}% reached",
                r.bandwidth_bound_tps,
                100.0 * r.decode_tps / r.bandwidth_bound_tps.max(1e-9)
            );
        }
        println!("peak RSS   {:.0} MiB", r.peak_rss_mb);
    }
    Ok(())
}
