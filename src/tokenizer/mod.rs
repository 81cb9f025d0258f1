//! Qwen's tokenizer: tiktoken-style byte-level BPE (rank = id), Qwen's split regex, NFC
//! normalization, control tokens by id, and streaming UTF-8 decoding.
//!
//! The BPE loop is our own rather than tiktoken-rs's `CoreBPE`: we need NFC before splitting,
//! a per-call choice of whether control-token text is parsed, token kinds from GGUF, and a
//! constructor that does not clone the regex 128 times.

mod bpe;
mod byte_unicode;
mod index;
mod load;
mod stream;

pub use byte_unicode::bytes_to_unicode;
pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use byte_unicode::UnicodeToBytes;
use fancy_regex::Regex;
use index::TokenIndex;
use load::{Entry, GgufToken};
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::path::Path;
use std::sync::OnceLock;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Qwen's pre-tokenizer (`PAT_STR` in `tokenization_qwen.py`): case-insensitive contractions,
/// letters with one leading non-letter, single digits, punctuation runs, and whitespace where
/// `\s+(?!\S)` leaves the last space of a run to the word after it.
pub const QWEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How `encode` treats text that spells a control token, such as `<|im_end|>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeMode {
    /// Control-token strings are ordinary text. Use this for anything a user typed, so that
    /// typing `<|im_end|>` cannot end a turn.
    Text,
    /// Control and user-defined token strings become their ids (tiktoken's
    /// `allowed_special="all"`). Only for text the application itself wrote.
    Trusted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Absent,
    Normal,
    Control,
    UserDefined,
}

/// A byte-level BPE tokenizer. Immutable after construction, so it is `Send + Sync` and one
/// instance serves every thread.
pub struct Tokenizer {
    /// Normal token bytes → rank (= id), for the BPE merges (keys in `bytes`); built on the
    /// first encode, since loading a model for decoding or benchmarks never needs it.
    index: OnceLock<TokenIndex>,
    /// Rank of each single byte: where every BPE merge starts.
    byte_ranks: [u32; 256],
    /// Bytes of every token, concatenated in id order; id `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    kinds: Vec<Kind>,
    /// Control and user-defined token text → id.
    specials: FxHashMap<String, u32>,
    /// Matches any special token's text, longest first; `None` when there are none.
    special_re: Option<Regex>,
    split_re: Regex,
    n_known: usize,
}

impl Tokenizer {
    /// Qwen-1's `qwen.tiktoken`: 151643 BPE ranks, then the 208 specials `<|endoftext|>`,
    /// `<|im_start|>`, `<|im_end|>`, `<|extra_0|>`..`<|extra_204|>` from id 151643 on.
    pub fn from_tiktoken_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_tiktoken_bytes(&data)
    }

    /// Like [`from_tiktoken_file`](Self::from_tiktoken_file), from the file's contents.
    pub fn from_tiktoken_bytes(data: &[u8]) -> Result<Tokenizer> {
        Self::from_entries(load::tiktoken_entries(data)?)
    }

    /// From GGUF's `tokenizer.ggml.tokens` (id = index; normal tokens in GPT-2 byte-to-unicode
    /// form) and `tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined; padding and
    /// other types keep their id but have no token). Normal tokens are BPE ranks with rank = id.
    pub fn from_gguf_vocab(tokens: &[&str], token_types: &[i32]) -> Result<Tokenizer> {
        load::check_gguf_lengths(tokens, token_types)?;
        let mut tok = Self::empty(tokens.len())?;
        // One pass, each token's bytes decoded straight into the shared buffer.
        let unicode = UnicodeToBytes::new();
        for (id, (&text, &ty)) in tokens.iter().zip(token_types).enumerate() {
            let kind = match load::gguf_token(text, ty) {
                GgufToken::Normal => {
                    load::normal_bytes_into(&unicode, id, text, &mut tok.bytes)?;
                    Kind::Normal
                }
                GgufToken::Absent => Kind::Absent,
                GgufToken::Control => tok.special(id as u32, text, Kind::Control),
                GgufToken::UserDefined => tok.special(id as u32, text, Kind::UserDefined),
            };
            tok.push(kind);
        }
        tok.finish()
    }

    fn from_entries(entries: Vec<Entry>) -> Result<Tokenizer> {
        let mut tok = Self::empty(entries.len())?;
        for (id, entry) in entries.into_iter().enumerate() {
            let kind = match entry {
                Entry::Absent => Kind::Absent,
                Entry::Normal(bytes) => {
                    tok.bytes.extend_from_slice(&bytes);
                    Kind::Normal
                }
                Entry::Control(text) => tok.special(id as u32, &text, Kind::Control),
            };
            tok.push(kind);
        }
        tok.finish()
    }

    /// A tokenizer without tokens, with room for `n`.
    fn empty(n: usize) -> Result<Tokenizer> {
        if n > u32::MAX as usize {
            return Err(Error::Tokenizer("more than 2^32 tokens".into()));
        }
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        Ok(Tokenizer {
            index: OnceLock::new(),
            byte_ranks: [0; 256],
            bytes: Vec::with_capacity(8 * n),
            offsets,
            kinds: Vec::with_capacity(n),
            specials: FxHashMap::default(),
            special_re: None,
            split_re: Regex::new(QWEN_PATTERN).expect("Qwen's pattern compiles"),
            n_known: 0,
        })
    }

    /// Ends token `kinds.len()`, whose bytes were just appended to `bytes`.
    fn push(&mut self, kind: Kind) {
        self.n_known += usize::from(kind != Kind::Absent);
        self.kinds.push(kind);
        self.offsets.push(self.bytes.len());
    }

    /// Appends the text of special token `id`; an empty text makes no token.
    fn special(&mut self, id: u32, text: &str, kind: Kind) -> Kind {
        if text.is_empty() {
            return Kind::Absent;
        }
        self.bytes.extend_from_slice(text.as_bytes());
        // A duplicate special text keeps its lowest id for encoding; both ids still decode.
        self.specials.entry(text.to_string()).or_insert(id);
        kind
    }

    /// Checks that every byte has a normal token and compiles the special-token regex.
    fn finish(mut self) -> Result<Tokenizer> {
        // The lowest id of each single-byte normal token (what the index would return).
        let mut ranks = [None; 256];
        for (id, kind) in self.kinds.iter().enumerate() {
            if *kind == Kind::Normal && self.offsets[id + 1] - self.offsets[id] == 1 {
                let b = self.bytes[self.offsets[id]] as usize;
                ranks[b] = ranks[b].or(Some(id as u32));
            }
        }
        self.byte_ranks = byte_ranks(|b| ranks[b[0] as usize])?;
        self.special_re = special_regex(self.specials.keys())?;
        Ok(self)
    }

    /// The bytes of token `id` (any kind; `id` below `kinds.len()`).
    fn bytes_of(&self, id: u32) -> &[u8] {
        &self.bytes[self.offsets[id as usize]..self.offsets[id as usize + 1]]
    }

    /// The rank (= id) of the normal token with these bytes: a duplicate keeps its lowest id
    /// for encoding (both ids still decode).
    fn rank(&self, key: &[u8]) -> Option<u32> {
        let index = self.index.get_or_init(|| {
            let normal =
                (0..self.kinds.len() as u32).filter(|&i| self.kinds[i as usize] == Kind::Normal);
            TokenIndex::build(normal.clone().count(), normal, |id| self.bytes_of(id))
        });
        index.get(key, |id| self.bytes_of(id))
    }

    /// Token ids of `text` after NFC normalization (as Qwen's `tokenize()` does).
    pub fn encode(&self, text: &str, mode: EncodeMode) -> Vec<u32> {
        let text = nfc(text);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match (mode, &self.special_re) {
            (EncodeMode::Trusted, Some(re)) => self.encode_with_specials(&text, re, &mut out),
            _ => self.encode_ordinary(&text, &mut out),
        }
        out
    }

    /// Special tokens become their ids; the text between them is split and encoded on its own,
    /// as tiktoken does (so `\s+(?!\S)` sees the end of each stretch).
    fn encode_with_specials(&self, text: &str, special_re: &Regex, out: &mut Vec<u32>) {
        let mut start = 0;
        // A literal alternation never needs backtracking, so the iterator yields no errors.
        for m in special_re.find_iter(text).map_while(|m| m.ok()) {
            self.encode_ordinary(&text[start..m.start()], out);
            out.push(self.specials[m.as_str()]);
            start = m.end();
        }
        self.encode_ordinary(&text[start..], out);
    }

    /// Splits with Qwen's pattern and encodes each piece; no special-token parsing.
    fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) {
        let (mut start, mut in_huge_run) = (0, false);
        // Like tiktoken's `find_iter`, text between matches is skipped (Qwen's pattern matches
        // at every position, so there is none).
        while let Some(piece) = self.next_piece(text, start, in_huge_run) {
            self.encode_piece(&text.as_bytes()[piece.start..piece.end], out);
            (start, in_huge_run) = (piece.end, piece.cut);
        }
    }

    /// The next pre-token at or after `start`. fancy-regex's backtracking stack overflows on a
    /// single pre-token of about a million chars (the reference tokenizer fails there too);
    /// such a run is cut into windows, so only its own tokens differ and no text is lost.
    /// `in_huge_run` skips the full search that just failed, keeping the cost linear.
    fn next_piece(&self, text: &str, start: usize, in_huge_run: bool) -> Option<Piece> {
        if start >= text.len() {
            return None;
        }
        if !in_huge_run {
            if let Ok(m) = self.split_re.find_from_pos(text, start) {
                let m = m.filter(|m| m.start() < m.end())?;
                return Some(Piece::whole(m.start(), m.end()));
            }
        }
        let end = floor_char_boundary(text, start + SPLIT_WINDOW);
        let (piece_start, piece_end) = match self.split_re.find_from_pos(&text[..end], start) {
            Ok(Some(m)) if m.start() < m.end() => (m.start(), m.end()),
            _ => (start, end),
        };
        Some(Piece {
            start: piece_start,
            end: piece_end,
            cut: piece_end == end && end < text.len(),
        })
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        match self.rank(piece) {
            Some(id) => out.push(id),
            None => bpe::encode_piece(piece, self, &self.byte_ranks, out),
        }
    }

    /// Text of `ids`, with Python's `decode(errors="replace")` rules: one U+FFFD per invalid
    /// sequence. Ids without a token (beyond the vocabulary, padding) add nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_filtered(ids, |_| true)
    }

    /// Like [`decode`](Self::decode), dropping control tokens. User-defined tokens
    /// (`<tool_call>`) stay, as with HF's `skip_special_tokens` and llama.cpp.
    pub fn decode_skip_special(&self, ids: &[u32]) -> String {
        self.decode_filtered(ids, |kind| kind != Kind::Control)
    }

    fn decode_filtered(&self, ids: &[u32], keep: impl Fn(Kind) -> bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if self.kind(id).is_some_and(&keep) {
                bytes.extend_from_slice(self.token_bytes(id).unwrap_or_default());
            }
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn kind(&self, id: u32) -> Option<Kind> {
        self.kinds.get(id as usize).copied()
    }

    /// Raw bytes of a normal token, or the text of a special one; `None` if `id` has no token.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        match self.kind(id)? {
            Kind::Absent => None,
            _ => Some(&self.bytes[self.offsets[id as usize]..self.offsets[id as usize + 1]]),
        }
    }

    /// Id of a control or user-defined token, e.g. `special_id("<|im_end|>")`.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.get(text).copied()
    }

    /// Whether `id` is a control or user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(self.kind(id), Some(Kind::Control | Kind::UserDefined))
    }

    /// Whether `id` is a control token (what `decode_skip_special` drops).
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == Some(Kind::Control)
    }

    /// Number of tokens known: normal plus special, without ids that have no token.
    pub fn n_vocab(&self) -> usize {
        self.n_known
    }
}

/// A summary: the tables themselves are far too big to print.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_known)
            .field("n_ids", &self.kinds.len())
            .field("n_specials", &self.specials.len())
            .finish()
    }
}

/// A pre-token's byte range; `cut` when it ends at a search window's end, not at a match's.
struct Piece {
    start: usize,
    end: usize,
    cut: bool,
}

impl Piece {
    fn whole(start: usize, end: usize) -> Self {
        Piece {
            start,
            end,
            cut: false,
        }
    }
}

/// Bytes searched for one pre-token when the whole text is too much for fancy-regex.
const SPLIT_WINDOW: usize = 1 << 16;

/// The largest char boundary of `text` at or below `i` (`str::floor_char_boundary` is unstable).
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// NFC form of `text`, borrowing when it already is (the common case, checked cheaply).
fn nfc(text: &str) -> Cow<'_, str> {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        _ => Cow::Owned(text.nfc().collect()),
    }
}

impl bpe::Ranks for Tokenizer {
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        Tokenizer::rank(self, bytes)
    }
}

/// Byte-level BPE needs a token for every byte, so any text can be encoded.
fn byte_ranks(rank: impl Fn(&[u8]) -> Option<u32>) -> Result<[u32; 256]> {
    let mut ranks = [0; 256];
    for (b, r) in ranks.iter_mut().enumerate() {
        *r = rank(&[b as u8][..]).ok_or_else(|| {
            Error::Tokenizer(format!("vocabulary has no token for byte 0x{b:02x}"))
        })?;
    }
    Ok(ranks)
}

/// One regex for all special texts; longer alternatives first, so where one special is a
/// prefix of another the longer wins.
fn special_regex<'a>(texts: impl Iterator<Item = &'a String>) -> Result<Option<Regex>> {
    let mut texts: Vec<&String> = texts.collect();
    if texts.is_empty() {
        return Ok(None);
    }
    texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    let pattern: Vec<Cow<str>> = texts.iter().map(|t| fancy_regex::escape(t)).collect();
    Regex::new(&pattern.join("|"))
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All 256 bytes (ids 0..=255), a few merges, two specials and a padding row.
    fn tiny() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| bytes_to_unicode(&[b])).collect();
        let mut types = vec![1; 256];
        for (text, ty) in [
            ("ĠĠ", 1),       // 256: two spaces
            ("aa", 1),       // 257
            ("Ã©", 1),       // 258: é
            ("<|end|>", 3),  // 259
            ("<|end|>x", 4), // 260: longer special sharing a prefix
            ("[PAD261]", 5), // 261
        ] {
            tokens.push(text.into());
            types.push(ty);
        }
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        Tokenizer::from_gguf_vocab(&tokens, &types).unwrap()
    }

    #[test]
    fn modes_and_specials() {
        let tok = tiny();
        assert_eq!(tok.n_vocab(), 261);
        assert_eq!(tok.encode("a<|end|>", EncodeMode::Trusted), [97, 259]);
        assert_eq!(tok.encode("<|end|>xa", EncodeMode::Trusted), [260, 97]);
        assert_eq!(tok.encode("<|end|>", EncodeMode::Text).len(), 7);
        assert_eq!(tok.special_id("<|end|>"), Some(259));
        assert_eq!(tok.decode_skip_special(&[259, 97, 260, 261]), "a<|end|>x");
        assert_eq!(tok.token_bytes(261), None);
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<StreamDecoder>();
    }

    #[test]
    fn nfc_before_splitting() {
        assert_eq!(tiny().encode("e\u{301}", EncodeMode::Text), [258]);
    }

    #[test]
    fn vocab_must_cover_every_byte() {
        let err = Tokenizer::from_gguf_vocab(&["a"], &[1]).err().unwrap();
        assert!(err.to_string().contains("byte 0x00"), "{err}");
    }

    #[test]
    fn a_huge_run_does_not_disturb_what_follows() {
        let tok = tiny();
        let tail = " aa <|end|>\n";
        let ids = tok.encode(&("a".repeat(3 << 20) + tail), EncodeMode::Text);
        let tail_ids = tok.encode(tail, EncodeMode::Text);
        assert!(ids.ends_with(&tail_ids));
        assert_eq!(ids.len(), (3 << 19) + tail_ids.len());
    }

    #[test]
    fn long_runs_lose_nothing() {
        let tok = tiny();
        for text in [
            " ".repeat(1 << 20) + "x",
            "a".repeat(1 << 18),
            "\n ".repeat(1 << 17),
        ] {
            let ids = tok.encode(&text, EncodeMode::Text);
            assert_eq!(tok.decode(&ids), text);
        }
    }
}
