//! Saved session state for the C ABI: the library's session state format
//! ([`crate::session::SessionState`]: the tokens and KV cache contents, the last logits, tied to
//! the model file, versioned and checksummed), carrying as its user data what only the C session
//! knows: the system prompt, the chat history and a token a generation had sampled but not
//! evaluated yet. Restoring copies the cache back (no prefill).
//!
//! User data:
//!
//! ```text
//! "QWCH" u32 version=1
//! u32 has_pending (0/1), u32 pending token
//! str system                                             (str = u32 length + UTF-8 bytes)
//! u32 n_turns, n_turns × (str user, str assistant)
//! ```

use super::error::{fail, FfiResult, QWEN_ERR_FORMAT};
use super::generate::State;
use crate::chat::Turn;

const MAGIC: &[u8; 4] = b"QWCH";
const VERSION: u32 = 1;

/// What the C session keeps beside the library state.
pub(crate) struct Extra {
    pub pending: Option<u32>,
    pub system: String,
    pub history: Vec<Turn>,
}

pub(crate) fn save(st: &State) -> FfiResult<Vec<u8>> {
    let extra = encode(st.pending(), &st.system, &st.history);
    let mut out = Vec::new();
    st.session.save_state_with(&mut out, None, &extra)?;
    Ok(out)
}

fn encode(pending: Option<u32>, system: &str, history: &[Turn]) -> Vec<u8> {
    let mut out = Vec::new();
    let u32_ = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    let str_ = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    out.extend_from_slice(MAGIC);
    u32_(&mut out, VERSION);
    u32_(&mut out, pending.is_some() as u32);
    u32_(&mut out, pending.unwrap_or(0));
    str_(&mut out, system);
    u32_(&mut out, history.len() as u32);
    for t in history {
        str_(&mut out, &t.user);
        str_(&mut out, &t.assistant);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> FfiResult<&[u8]> {
        if n > self.0.len() {
            return fail(
                QWEN_ERR_FORMAT,
                "session state: the C session data is truncated",
            );
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> FfiResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> FfiResult<String> {
        let n = self.u32()? as usize;
        match std::str::from_utf8(self.bytes(n)?) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => fail(
                QWEN_ERR_FORMAT,
                "session state holds text that is not UTF-8",
            ),
        }
    }
}

/// Parses the user data of a state saved by [`save`].
pub(crate) fn parse_extra(bytes: &[u8], n_vocab: usize) -> FfiResult<Extra> {
    let mut r = Reader(bytes);
    if r.bytes(4).ok() != Some(MAGIC.as_slice()) {
        return fail(
            QWEN_ERR_FORMAT,
            "session state was not saved by a C session (qwen_session_save_state)",
        );
    }
    let version = r.u32()?;
    if version != VERSION {
        return fail(
            QWEN_ERR_FORMAT,
            format!("C session data version {version} (this library reads {VERSION})"),
        );
    }
    let has_pending = r.u32()?;
    let token = r.u32()?;
    let pending = match has_pending {
        0 => None,
        1 if (token as usize) < n_vocab => Some(token),
        _ => return fail(QWEN_ERR_FORMAT, "session state holds a bad pending token"),
    };
    let system = r.str()?;
    let n_turns = r.u32()? as usize;
    if n_turns > r.0.len() / 8 {
        return fail(
            QWEN_ERR_FORMAT,
            "session state: the C session data is truncated",
        );
    }
    let mut history = Vec::with_capacity(n_turns);
    for _ in 0..n_turns {
        let user = r.str()?;
        let assistant = r.str()?;
        history.push(Turn { user, assistant });
    }
    if !r.0.is_empty() {
        return fail(QWEN_ERR_FORMAT, "session state has trailing C session data");
    }
    Ok(Extra {
        pending,
        system,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::QWEN_ERR_FORMAT;

    fn sample() -> Vec<u8> {
        let history = vec![Turn {
            user: "héllo".into(),
            assistant: "wörld 😀".into(),
        }];
        encode(Some(299), "Be brief.", &history)
    }

    #[test]
    fn round_trip() {
        let saved = parse_extra(&sample(), 300).unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(saved.pending, Some(299));
        assert_eq!(saved.system, "Be brief.");
        assert_eq!(saved.history[0].assistant, "wörld 😀");
        let none = encode(None, "", &[]);
        assert!(parse_extra(&none, 300).unwrap().pending.is_none());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_valid_state() {
        let bytes = sample();
        for n in 0..bytes.len() {
            let e = parse_extra(&bytes[..n], 300)
                .err()
                .expect("truncated state accepted");
            assert_eq!(e.code, QWEN_ERR_FORMAT, "{n}: {}", e.msg);
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(parse_extra(&extra, 300).is_err());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(s) = parse_extra(&b, 300) {
                    assert!(s.pending.is_none_or(|t| t < 300));
                }
            }
        }
    }

    #[test]
    fn a_pending_token_outside_the_vocabulary_is_refused() {
        let e = parse_extra(&sample(), 299).err().unwrap();
        assert!(e.msg.contains("pending"), "{}", e.msg);
    }
}
