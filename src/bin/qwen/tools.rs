//! `qwen run --chat --tools FILE.json`: one tool-use turn through `qwen::chat::tools`.

use super::{load, write_piece, CliResult, RunArgs};
use qwen::chat::tools::{ChatMessage, FunctionSpec, ToolChat, ToolFormat};
use qwen::chat::DEFAULT_SYSTEM_PROMPT;
use qwen::sampler::Sampler;
use std::io::Write;
use std::path::Path;

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds the prompt for the model's tool format, generates with the format's stop strings,
/// and prints the parsed reply (streamed text plus the calls, or one JSON object with --json).
pub fn run(a: &RunArgs, tools: &Path) -> CliResult {
    let functions = FunctionSpec::list_from_json(&read(tools)?)
        .map_err(|e| format!("{}: {e}", tools.display()))?;
    let messages = match &a.messages {
        Some(path) => ChatMessage::list_from_json(&read(path)?)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            let mut m = Vec::new();
            // Without --system each format uses its own default system prompt.
            if a.system != DEFAULT_SYSTEM_PROMPT {
                m.push(ChatMessage::system(a.system.clone()));
            }
            m.push(ChatMessage::user(a.prompt.clone()));
            m
        }
    };
    let sampling = a.sampling.params()?;
    let (model, mut session) = load(&a.model)?;
    let tok = model.tokenizer()?;
    let mut tc = ToolChat::for_model(&model)?;
    if let Some(f) = &a.tool_format {
        tc.format = ToolFormat::parse(f)?;
    }
    tc.max_window_size = a.max_window_size;
    let prompt = tc.render(tok, &messages, &functions, &a.stop)?;

    let mut stdout = std::io::stdout().lock();
    if a.n_predict == 0 {
        // Nothing to generate: show the prompt instead of evaluating it.
        let json = serde_json::json!({
            "format": prompt.format.as_str(),
            "prompt": prompt.text,
            "prompt_ids": prompt.ids,
            "stop_strings": prompt.stop_strings,
        });
        writeln!(
            stdout,
            "{}",
            if a.json {
                json.to_string()
            } else {
                prompt.text
            }
        )?;
        return Ok(());
    }
    let stream = !a.json;
    let mut on_text = |piece: &str| !stream || write_piece(&mut stdout, piece);
    let mut sampler = Sampler::new(sampling);
    let (gen, reply) = tc.generate(
        &mut session,
        &mut sampler,
        &prompt,
        a.n_predict,
        &mut on_text,
    )?;
    let finish_reason = if reply.tool_calls.is_empty() {
        gen.finish_reason.as_str()
    } else {
        reply.finish.as_str()
    };
    if stream {
        writeln!(stdout)?;
        for c in &reply.tool_calls {
            writeln!(stdout, "[tool call] {} {}", c.name, c.arguments)?;
        }
    } else {
        let json = serde_json::json!({
            "content": reply.content,
            "tool_calls": reply.tool_calls.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            "finish_reason": finish_reason,
            "format": prompt.format.as_str(),
            "prompt_ids": prompt.ids,
            "generated_ids": gen.token_ids,
            "text": gen.text,
        });
        writeln!(stdout, "{json}")?;
    }
    Ok(())
}
