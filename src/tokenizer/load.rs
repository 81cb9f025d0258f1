//! Reading vocabularies: Qwen-1's `qwen.tiktoken` and a GGUF `tokenizer.ggml.*` token list.
//! Both produce one [`Entry`] per id; `Tokenizer::from_entries` does the rest.

use super::byte_unicode::UnicodeToBytes;
use crate::error::{Error, Result};

/// What an id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// No token: a gap in the ranks or a padding row of the embedding. Decodes to nothing.
    Absent,
    /// A BPE token; its rank is its id.
    Normal(Vec<u8>),
    /// A control token (`<|im_start|>`): inserted by id, or parsed from text only in Trusted mode.
    Control(String),
}

/// Qwen-1's special tokens in id order, starting right after the BPE ranks
/// (`SPECIAL_START_ID` in `tokenization_qwen.py`).
pub const QWEN1_SPECIAL_START: u32 = 151643;
const QWEN1_N_EXTRAS: usize = 205;

fn qwen1_specials() -> impl Iterator<Item = String> {
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .into_iter()
        .map(String::from)
        .chain((0..QWEN1_N_EXTRAS).map(|i| format!("<|extra_{i}|>")))
}

/// Parses `qwen.tiktoken` (lines of `base64(token bytes) rank`) and appends Qwen-1's specials.
pub fn tiktoken_entries(data: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = vec![Entry::Absent; QWEN1_SPECIAL_START as usize];
    for (index, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let bad = |msg: &str| Error::Tokenizer(format!("qwen.tiktoken line {}: {msg}", index + 1));
        let (bytes, rank) = parse_tiktoken_line(line).map_err(bad)?;
        let slot = entries
            .get_mut(rank as usize)
            .ok_or_else(|| bad("rank collides with the special tokens (>= 151643)"))?;
        if *slot != Entry::Absent {
            return Err(bad("duplicate rank"));
        }
        *slot = Entry::Normal(bytes);
    }
    entries.extend(qwen1_specials().map(Entry::Control));
    Ok(entries)
}

fn parse_tiktoken_line(line: &[u8]) -> std::result::Result<(Vec<u8>, u32), &'static str> {
    let mut fields = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected `base64 rank`");
    };
    let bytes = decode_base64(token).ok_or("invalid base64 token")?;
    let rank = std::str::from_utf8(rank)
        .ok()
        .and_then(|r| r.parse().ok())
        .ok_or("invalid rank")?;
    Ok((bytes, rank))
}

/// Standard base64 with optional `=` padding (what Python's `b64encode` writes).
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let text = text
        .strip_suffix(b"==")
        .or(text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut nbits) = (0u32, 0);
    for &c in text {
        acc = (acc << 6) | base64_value(c)?;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
        }
    }
    Some(out)
}

fn base64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(v as u32)
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
}

/// What a GGUF vocabulary row stands for: normal tokens are GPT-2 byte-to-unicode strings,
/// control and user-defined tokens are literal text. Padding rows (`[PAD151935]`, which
/// converters mark unused, control or user-defined) and other types (unknown, unused, byte)
/// keep their id but have no token, so they can neither be typed nor decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufToken {
    Absent,
    Normal,
    Control,
    UserDefined,
}

pub fn gguf_token(text: &str, ty: i32) -> GgufToken {
    match ty {
        token_type::NORMAL => GgufToken::Normal,
        _ if is_padding(text) => GgufToken::Absent,
        token_type::CONTROL => GgufToken::Control,
        token_type::USER_DEFINED => GgufToken::UserDefined,
        _ => GgufToken::Absent,
    }
}

/// Checks that a GGUF vocabulary has one type per token.
pub fn check_gguf_lengths(tokens: &[&str], token_types: &[i32]) -> Result<()> {
    if tokens.len() != token_types.len() {
        return Err(Error::Tokenizer(format!(
            "GGUF vocabulary has {} tokens but {} token types",
            tokens.len(),
            token_types.len()
        )));
    }
    Ok(())
}

/// Appends the bytes of normal token `id` (GPT-2 byte-to-unicode text) to `out`; on error,
/// `out` is left as it was.
pub fn normal_bytes_into(
    unicode: &UnicodeToBytes,
    id: usize,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<()> {
    let len = out.len();
    unicode.decode_into(text, out).ok_or_else(|| {
        out.truncate(len);
        Error::Tokenizer(format!(
            "GGUF token {id} ({text:?}) is not in GPT-2 byte-to-unicode form"
        ))
    })
}

/// `[PAD<digits>]`, the name converters give to embedding rows without a token.
fn is_padding(text: &str) -> bool {
    text.strip_prefix("[PAD")
        .and_then(|t| t.strip_suffix(']'))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_python() {
        assert_eq!(decode_base64(b"IQ==").unwrap(), b"!");
        assert_eq!(decode_base64(b"4rqf").unwrap(), "⺟".as_bytes());
        assert_eq!(decode_base64(b"aGk=").unwrap(), b"hi");
        assert!(decode_base64(b"a").is_none());
        assert!(decode_base64(b"a*==").is_none());
    }

    #[test]
    fn tiktoken_errors_name_the_line() {
        let err = tiktoken_entries(b"IQ== 0\n\nIg==\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        let err = tiktoken_entries(b"IQ== 0\nIg== 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("duplicate"), "{err}");
    }

    #[test]
    fn qwen1_specials_follow_the_ranks() {
        let entries = tiktoken_entries(b"IQ== 0\r\n").unwrap();
        assert_eq!(entries.len(), 151851);
        assert_eq!(entries[0], Entry::Normal(b"!".to_vec()));
        assert_eq!(entries[151645], Entry::Control("<|im_end|>".into()));
        assert_eq!(entries[151850], Entry::Control("<|extra_204|>".into()));
    }

    #[test]
    fn gguf_types_and_padding() {
        use GgufToken::*;
        let rows = [
            ("Ġa", 1, Normal),
            ("<|im_end|>", 3, Control),
            ("<tool_call>", 4, UserDefined),
            ("[PAD3]", 3, Absent),
            ("<unk>", 2, Absent),
            ("[PAD5]", 5, Absent),
            ("[PAD6]", 4, Absent),
        ];
        for (text, ty, want) in rows {
            assert_eq!(gguf_token(text, ty), want, "{text}");
        }
        let unicode = UnicodeToBytes::new();
        let mut out = b"x".to_vec();
        normal_bytes_into(&unicode, 0, "Ġa", &mut out).unwrap();
        assert_eq!(out, b"x a");
        let err = normal_bytes_into(&unicode, 7, "中", &mut out).unwrap_err();
        assert!(err.to_string().contains("GGUF token 7"), "{err}");
        assert_eq!(out, b"x a", "a failed token leaves the buffer as it was");
        assert!(check_gguf_lengths(&["a", "b"], &[1]).is_err());
    }
}
