//! The tokenizer as GGUF stores it (`tokenizer.ggml.*`, llama.cpp's "gpt2" BPE model): tokens in
//! GPT-2 byte-to-unicode form, one per embedding row, their types, and the merges that llama.cpp
//! needs (derived from the ranks, as llama.cpp's `convert_hf_to_gguf.py` does for Qwen).
//!
//! Sources: Qwen-1's `qwen.tiktoken` (base64 token bytes + rank per line, specials implied),
//! Qwen-2's `vocab.json` + `merges.txt`, or `tokenizer.json`.

use super::hf::read_json;
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// The special tokens Qwen-1's `tokenization_qwen.py` appends after the ranks, in id order.
fn qwen1_specials() -> Vec<String> {
    let mut v = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".to_string(),
        "<|im_end|>".to_string(),
    ];
    v.extend((0..205).map(|i| format!("<|extra_{i}|>")));
    v
}

/// The ChatML template Qwen chat models use, for checkpoints whose tokenizer config has none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A vocabulary ready to be written into a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// One per embedding row; ids without a token are `[PAD{id}]`.
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub chat_template: Option<String>,
}

impl Vocab {
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .map(|i| i as u32)
    }
}

/// GPT-2's reversible byte → printable character map: printable Latin-1 bytes map to
/// themselves, the rest to U+0100 onwards, so every byte string becomes a clean string.
pub fn byte_to_unicode_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let cp = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).expect("below the surrogate range");
    }
    table
}

pub fn bytes_to_unicode(table: &[char; 256], bytes: &[u8]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Standard base64 (with or without padding), as `qwen.tiktoken` uses.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Reads `qwen.tiktoken`: one `base64 rank` per line, ranks 0..n in order.
pub fn read_tiktoken(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut ranks = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| Error::Tokenizer(format!("{}:{}: {msg}", path.display(), lineno + 1));
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<base64> <rank>`"))?;
        let bytes = base64_decode(b64).ok_or_else(|| bad("invalid base64"))?;
        let rank: usize = rank.trim().parse().map_err(|_| bad("invalid rank"))?;
        if rank != ranks.len() {
            return Err(bad(&format!(
                "rank {rank} out of order (expected {})",
                ranks.len()
            )));
        }
        ranks.push(bytes);
    }
    if ranks.is_empty() {
        return Err(Error::Tokenizer(format!("{}: no tokens", path.display())));
    }
    Ok(ranks)
}

/// The merge that produced each multi-byte token: run byte-level BPE on the token using only
/// ranks below its own, which must leave exactly two parts (llama.cpp's `QwenModel.bpe`).
pub fn merges_from_ranks(ranks: &[Vec<u8>], table: &[char; 256]) -> Result<Vec<String>> {
    let lookup: HashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_slice(), i))
        .collect();
    let mut merges = Vec::with_capacity(ranks.len());
    let mut parts: Vec<(usize, usize)> = Vec::new();
    for (rank, token) in ranks.iter().enumerate() {
        if token.len() < 2 {
            continue;
        }
        parts.clear();
        parts.extend((0..token.len()).map(|i| (i, i + 1)));
        loop {
            let mut best: Option<(usize, usize)> = None; // (rank, index)
            for i in 0..parts.len() - 1 {
                let piece = &token[parts[i].0..parts[i + 1].1];
                if let Some(&r) = lookup.get(piece) {
                    if r < rank && best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            parts[i].1 = parts[i + 1].1;
            parts.remove(i + 1);
        }
        if parts.len() != 2 {
            return Err(Error::Tokenizer(format!(
                "token of rank {rank} cannot be built from two lower-ranked tokens; \
                 the ranks are not a BPE vocabulary"
            )));
        }
        merges.push(format!(
            "{} {}",
            bytes_to_unicode(table, &token[parts[0].0..parts[0].1]),
            bytes_to_unicode(table, &token[parts[1].0..parts[1].1])
        ));
    }
    Ok(merges)
}

/// Fills ids `0..n_vocab`: known tokens, then `[PAD{id}]` for embedding rows without one.
fn assemble(
    n_vocab: usize,
    entries: Vec<(usize, String, i32)>,
    merges: Vec<String>,
) -> Result<Vocab> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    for (id, text, ty) in entries {
        let slot = tokens.get_mut(id).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token `{text}` has id {id}, but the model's embedding has only {n_vocab} rows"
            ))
        })?;
        if let Some((prev, _)) = slot {
            return Err(Error::Tokenizer(format!(
                "id {id} is given to both `{prev}` and `{text}`"
            )));
        }
        *slot = Some((text, ty));
    }
    let (tokens, types) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| t.unwrap_or_else(|| (format!("[PAD{id}]"), token_type::UNUSED)))
        .unzip();
    Ok(Vocab {
        tokens,
        types,
        merges,
        chat_template: None,
    })
}

/// The vocabulary from a `qwen.tiktoken` file, with Qwen's specials after the ranks.
pub fn from_tiktoken(path: &Path, n_vocab: usize) -> Result<Vocab> {
    let ranks = read_tiktoken(path)?;
    let table = byte_to_unicode_table();
    let merges = merges_from_ranks(&ranks, &table)?;
    let n_ranks = ranks.len();
    let mut entries: Vec<(usize, String, i32)> = ranks
        .iter()
        .enumerate()
        .map(|(id, b)| (id, bytes_to_unicode(&table, b), token_type::NORMAL))
        .collect();
    entries.extend(
        qwen1_specials()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (n_ranks + i, s, token_type::CONTROL)),
    );
    assemble(n_vocab, entries, merges)
}

/// Added tokens from `tokenizer.json` (`added_tokens`) or `tokenizer_config.json`
/// (`added_tokens_decoder`), as (id, text, type).
fn added_tokens(v: &Value) -> Vec<(usize, String, i32)> {
    let ty = |t: &Value| {
        if t.get("special").and_then(Value::as_bool).unwrap_or(true) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        }
    };
    let mut out = Vec::new();
    if let Some(list) = v.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            if let (Some(id), Some(text)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) {
                out.push((id as usize, text.to_string(), ty(t)));
            }
        }
    }
    if let Some(map) = v.get("added_tokens_decoder").and_then(Value::as_object) {
        for (id, t) in map {
            if let (Ok(id), Some(text)) = (
                id.parse::<usize>(),
                t.get("content").and_then(Value::as_str),
            ) {
                out.push((id, text.to_string(), ty(t)));
            }
        }
    }
    out
}

/// Merges as "a b" strings; newer `tokenizer.json` files store them as pairs.
fn merges_of(list: &[Value], file: &Path) -> Result<Vec<String>> {
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(()),
            },
            _ => Err(()),
        })
        .collect::<std::result::Result<_, ()>>()
        .map_err(|_| Error::Tokenizer(format!("{}: malformed merges", file.display())))
}

/// Base vocabulary (text → id) plus added tokens into one id-ordered vocab.
fn from_parts(
    n_vocab: usize,
    vocab: &serde_json::Map<String, Value>,
    added: Vec<(usize, String, i32)>,
    merges: Vec<String>,
    file: &Path,
) -> Result<Vocab> {
    let mut entries = Vec::with_capacity(vocab.len() + added.len());
    let mut taken: HashMap<usize, ()> = HashMap::new();
    for (id, text, ty) in added {
        if taken.insert(id, ()).is_none() {
            entries.push((id, text, ty));
        }
    }
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{}: id of `{text}` is not an integer",
                file.display()
            ))
        })? as usize;
        // tokenizer.json repeats added tokens in the base vocab for some models.
        if !taken.contains_key(&id) {
            entries.push((id, text.clone(), token_type::NORMAL));
        }
    }
    assemble(n_vocab, entries, merges)
}

/// The vocabulary of a Qwen-1.5/2/2.5 checkpoint directory (or a `tokenizer.json` path),
/// `None` when the directory has no tokenizer files.
pub fn from_hf(dir_or_file: &Path, n_vocab: usize) -> Result<Option<Vocab>> {
    let (dir, tokenizer_json) = if dir_or_file.is_file() {
        let dir = dir_or_file.parent().unwrap_or(Path::new("."));
        (dir.to_path_buf(), dir_or_file.to_path_buf())
    } else {
        (
            dir_or_file.to_path_buf(),
            dir_or_file.join("tokenizer.json"),
        )
    };
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.is_file() {
        Some(read_json(&config_path)?)
    } else {
        None
    };
    let mut vocab = if tokenizer_json.is_file() {
        let v = read_json(&tokenizer_json)?;
        let model = v
            .get("model")
            .ok_or_else(|| Error::Tokenizer(format!("{}: no `model`", tokenizer_json.display())))?;
        if let Some(t) = model.get("type").and_then(Value::as_str) {
            if t != "BPE" {
                return Err(Error::Unsupported(format!(
                    "{}: tokenizer model `{t}` (only BPE)",
                    tokenizer_json.display()
                )));
            }
        }
        let base = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::Tokenizer(format!("{}: no `model.vocab`", tokenizer_json.display()))
            })?;
        let merges = match model.get("merges").and_then(Value::as_array) {
            Some(list) => merges_of(list, &tokenizer_json)?,
            None => Vec::new(),
        };
        from_parts(n_vocab, base, added_tokens(&v), merges, &tokenizer_json)?
    } else if dir.join("vocab.json").is_file() {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let v = read_json(&vocab_path)?;
        let base = v.as_object().ok_or_else(|| {
            Error::Tokenizer(format!("{}: not a JSON object", vocab_path.display()))
        })?;
        let text = std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
        let merges = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let mut added = config.as_ref().map(added_tokens).unwrap_or_default();
        if added.is_empty() {
            // No added-token list: Qwen's three control tokens follow the base vocab.
            added = qwen1_specials()
                .into_iter()
                .take(3)
                .enumerate()
                .map(|(i, s)| (base.len() + i, s, token_type::CONTROL))
                .collect();
        }
        from_parts(n_vocab, base, added, merges, &vocab_path)?
    } else {
        return Ok(None);
    };
    vocab.chat_template = config
        .as_ref()
        .and_then(|c| c.get("chat_template"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Some(vocab))
}

/// A tokenizer given with `--tokenizer`: a `qwen.tiktoken`, a `tokenizer.json`, a `vocab.json`
/// (with `merges.txt` beside it) or a directory holding one of these.
pub fn from_path(path: &Path, n_vocab: usize) -> Result<Vocab> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
        ));
    }
    if path.is_dir() {
        let tiktoken = path.join("qwen.tiktoken");
        if tiktoken.is_file() {
            return from_tiktoken(&tiktoken, n_vocab);
        }
        return from_hf(path, n_vocab)?.ok_or_else(|| {
            Error::Tokenizer(format!(
                "{}: no qwen.tiktoken, tokenizer.json or vocab.json",
                path.display()
            ))
        });
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".json") {
        if name == "vocab.json" {
            let dir = path.parent().unwrap_or(Path::new("."));
            return from_hf(dir, n_vocab)?
                .ok_or_else(|| Error::Tokenizer(format!("{}: unreadable", path.display())));
        }
        return from_hf(path, n_vocab)?
            .ok_or_else(|| Error::Tokenizer(format!("{}: unreadable", path.display())));
    }
    from_tiktoken(path, n_vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_unicode_table();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn merges_follow_ranks() {
        let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        ranks.push(b"ab".to_vec());
        ranks.push(b"abc".to_vec());
        ranks.push(b"bc".to_vec());
        ranks.push(b"abcbc".to_vec());
        let m = merges_from_ranks(&ranks, &byte_to_unicode_table()).unwrap();
        assert_eq!(m, vec!["a b", "ab c", "b c", "abc bc"]);
    }
}
