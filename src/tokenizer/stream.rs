//! Incremental decoding for streamed generation: a token often carries only part of a UTF-8
//! character (CJK, emoji), so bytes are held until the character they start is complete.

use super::Tokenizer;

/// Turns a stream of ids into text pieces. Concatenating every piece and `finish()` gives exactly
/// `Tokenizer::decode` of all the ids: an invalid sequence becomes one U+FFFD as soon as it is
/// certain to be invalid, an incomplete one at the end waits for the next token.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes of a character that is not complete yet (at most 3).
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `id` and returns the text that is now certain.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        let mut out = String::new();
        self.push_into(tok, id, &mut out);
        out
    }

    /// Like [`push`](Self::push), appending to `out` so a caller can reuse one buffer.
    pub fn push_into(&mut self, tok: &Tokenizer, id: u32, out: &mut String) {
        if let Some(bytes) = tok.token_bytes(id) {
            self.pending.extend_from_slice(bytes);
        }
        let used = drain_complete(&self.pending, out);
        self.pending.drain(..used);
    }

    /// Flushes what is held back (an unfinished character becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Appends the decodable prefix of `bytes` to `out`, replacing each invalid sequence like
/// `String::from_utf8_lossy` does, and returns how many bytes it consumed. An incomplete
/// sequence at the very end is left unconsumed.
fn drain_complete(bytes: &[u8], out: &mut String) -> usize {
    let mut pos = 0;
    loop {
        match std::str::from_utf8(&bytes[pos..]) {
            Ok(s) => {
                out.push_str(s);
                return bytes.len();
            }
            Err(e) => {
                let valid = pos + e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[pos..valid]).expect("validated"));
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos = valid + n;
                    }
                    None => return valid,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(bytes: &[u8]) -> (String, usize) {
        let mut out = String::new();
        let used = drain_complete(bytes, &mut out);
        (out, used)
    }

    #[test]
    fn holds_back_an_incomplete_tail() {
        let smile = "😀".as_bytes();
        assert_eq!(drain(&smile[..2]), (String::new(), 0));
        assert_eq!(drain(b"ab\xE4\xBD"), ("ab".to_string(), 2));
    }

    #[test]
    fn replaces_what_is_certainly_invalid() {
        // A lone continuation byte, then a lead byte interrupted by ASCII.
        assert_eq!(
            drain(b"\x80a\xE4\xBDb"),
            ("\u{FFFD}a\u{FFFD}b".to_string(), 5)
        );
    }
}
