//! `qwen-convert`: Hugging Face Qwen checkpoints (or GGUF files) into a GGUF file.
//! Argument parsing and the progress bar only; the work is `qwen::convert::convert`.

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwen::convert::{convert, ConvertOptions, ConvertReport, OutType, ProgressEvent};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "qwen-convert",
    version,
    about = "Convert a Hugging Face Qwen checkpoint (Qwen-1, Qwen-1.5/2/2.5) or a GGUF file into a GGUF file"
)]
struct Args {
    /// A checkpoint directory (config.json + safetensors) or a .gguf file to re-quantize.
    input: PathBuf,
    /// The GGUF file to write.
    #[arg(short, long, required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// Tensor type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m.
    #[arg(short = 't', long = "type", default_value = "f16")]
    ty: String,
    /// Tokenizer for checkpoints that ship none: a qwen.tiktoken, tokenizer.json or vocab.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A PEFT LoRA adapter directory to merge into the weights before quantizing.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Multiplies the adapter's lora_alpha / r scaling.
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    lora_scale: f64,
    /// general.name to record (default: the input's name).
    #[arg(long)]
    name: Option<String>,
    /// Check the input and print what would be written, without writing.
    #[arg(long)]
    dry_run: bool,
    /// Print one line per tensor.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qwen-convert: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> qwen::Result<()> {
    let mut opts = ConvertOptions::new(&args.input, args.output.clone().unwrap_or_default());
    opts.out_type = OutType::parse(&args.ty)?;
    opts.tokenizer = args.tokenizer.clone();
    opts.lora = args.lora.clone();
    opts.lora_scale = args.lora_scale;
    opts.name = args.name.clone();
    opts.dry_run = args.dry_run;

    // The bar goes to stderr and only when it is a terminal, so logs and pipes stay clean.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    let report = convert(&opts, &mut |ev| match ev {
        ProgressEvent::Start { bytes, .. } => bar.set_length(bytes),
        ProgressEvent::Tensor {
            index, name, ty, ..
        } => bar.set_message(format!("[{}] {name} {ty}", index + 1)),
        ProgressEvent::TensorDone { bytes } => bar.inc(bytes),
        ProgressEvent::Warning(w) => bar.suspend(|| eprintln!("qwen-convert: warning: {w}")),
    })?;
    bar.finish_and_clear();
    for line in &report.info {
        eprintln!("qwen-convert: {line}");
    }
    print_report(&report, args.verbose || args.dry_run);
    Ok(())
}

fn print_report(r: &ConvertReport, per_tensor: bool) {
    if per_tensor {
        for t in &r.tensors {
            let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
            println!(
                "{:<28} {:>5} [{}] <- {}{}",
                t.name,
                t.ty.to_string(),
                dims.join(", "),
                t.source,
                t.note
                    .as_ref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            );
        }
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in &r.tensors {
        let name = t.ty.to_string();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some(c) => c.1 += 1,
            None => counts.push((name, 1)),
        }
    }
    let types: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let mib = r.data_bytes as f64 / (1024.0 * 1024.0);
    match &r.output {
        Some(p) => println!(
            "wrote {}: arch {}, {} tensors ({}), {mib:.1} MiB of weights, {} tokens",
            p.display(),
            r.arch,
            r.tensors.len(),
            types.join(", "),
            r.n_tokens
        ),
        None => println!(
            "dry run: arch {}, {} tensors ({}), {mib:.1} MiB of weights, {} tokens; nothing written",
            r.arch,
            r.tensors.len(),
            types.join(", "),
            r.n_tokens
        ),
    }
    // This process's own high-water mark (VmHWM starts afresh at exec), so callers and tests
    // can see that conversion streams instead of loading the checkpoint.
    println!("peak RSS {:.0} MiB", qwen::bench::peak_rss_mb());
}
