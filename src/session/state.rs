//! Saving and restoring a session: the tokens and the KV cache contents of every sequence, the
//! logits of the last evaluated token, Qwen-1's frozen NTK alphas, optionally a sampler's random
//! state and some application bytes, in a versioned, checksummed file. Restoring copies the
//! cache back (no re-evaluation), so a restored session continues exactly as the saved one
//! would have: same logits bit for bit, same greedy ids.
//!
//! Format (version 1, little-endian):
//!
//! ```text
//! "QWENSESS"  u32 version
//! model:      u32 arch (0 qwen, 1 qwen2), u32 n_vocab, n_layer, n_embd, n_head, n_head_kv,
//!             head_dim, n_ff; u64 weights fingerprint; u64 settings fingerprint
//! cache:      u32 kv type (0 f32, 1 f16, 2 q8), u32 n_ctx of the saving session, u32 n_seq
//! n_seq ×     u32 n_tokens, f64 ntk_alpha, n_tokens × u32 token
//! logits:     n_vocab × f32 (what `Session::logits` returned when saved)
//! sampler:    u32 present (0/1); if 1: f32 temperature, f32 top_p, u64 top_k,
//!             f32 repetition_penalty, u64 seed, 4 × u64 generator state
//! user data:  u32 length, bytes (an application's own, e.g. the CLI's chat history)
//! cache rows: for each sequence, for each layer: the keys then the values of its positions,
//!             as stored (f32 / f16 bits / int8 then f32 scales per block of 32)
//! u64 checksum of everything before it
//! ```
//!
//! The weights fingerprint hashes every tensor's name, type, shape and offset, samples of its
//! data and the file size, so a state only loads into the model file it was made with; the
//! settings fingerprint covers what the forward pass depends on beyond the weights (RoPE base and
//! scaling, dynamic NTK, logN, norm epsilon).

use super::Session;
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheType;
use crate::model::{Arch, Model, RopeScaling};
use crate::sampler::{Rng, Sampler, SamplingParams};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"QWENSESS";
/// The state format this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// Most application bytes a state carries.
pub const MAX_USER_DATA: usize = 16 << 20;
const MAX_SEQ: usize = 4096;
const MAX_CTX: usize = 1 << 20;

fn bad(msg: impl Into<String>) -> Error {
    Error::State(msg.into())
}

/// A fast checksum that catches any single changed word for sure: four lanes, each a chain of
/// `lane = (lane ^ word) * P` (a bijection of both the lane and the word), over interleaved
/// 8-byte words, folded with the length at the end. Not cryptographic.
#[derive(Clone)]
struct Checksum {
    lanes: [u64; 4],
    buf: [u8; 32],
    n_buf: usize,
    len: u64,
}

const PRIME: u64 = 0x0000_0100_0000_01B3; // FNV-1a 64

impl Checksum {
    fn new() -> Checksum {
        Checksum {
            lanes: [
                0xcbf2_9ce4_8422_2325,
                0x9E37_79B9_7F4A_7C15,
                0xD6E8_FEB8_6659_FD93,
                0xA076_1D64_78BD_642F,
            ],
            buf: [0; 32],
            n_buf: 0,
            len: 0,
        }
    }

    fn block(lanes: &mut [u64; 4], b: &[u8]) {
        for (l, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            *l = (*l ^ word).wrapping_mul(PRIME);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.n_buf > 0 {
            let take = (32 - self.n_buf).min(data.len());
            self.buf[self.n_buf..self.n_buf + take].copy_from_slice(&data[..take]);
            self.n_buf += take;
            data = &data[take..];
            if self.n_buf < 32 {
                return;
            }
            Self::block(&mut self.lanes, &self.buf);
            self.n_buf = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            Self::block(&mut self.lanes, b);
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.n_buf = rest.len();
    }

    fn finish(&self) -> u64 {
        let mut lanes = self.lanes;
        if self.n_buf > 0 {
            let mut last = [0u8; 32];
            last[..self.n_buf].copy_from_slice(&self.buf[..self.n_buf]);
            Self::block(&mut lanes, &last);
        }
        let mut h = self.len.wrapping_mul(PRIME) ^ 0x5851_F42D_4C95_7F2D;
        for l in lanes {
            h = (h ^ l).wrapping_mul(PRIME);
            h ^= h >> 29;
        }
        h
    }
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut c = Checksum::new();
    for p in parts {
        c.update(&(p.len() as u64).to_le_bytes());
        c.update(p);
    }
    c.finish()
}

/// What a state must agree on with the model it is loaded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    /// arch, n_vocab, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff
    shape: [u32; 8],
    weights: u64,
    settings: u64,
}

/// Bytes of each tensor's data that go into the weights fingerprint (from its start and end).
const SAMPLE: usize = 256;

fn fingerprint(model: &Model) -> Fingerprint {
    let c = &model.config;
    let arch = match c.arch {
        Arch::Qwen => 0,
        Arch::Qwen2 => 1,
    };
    let shape = [
        arch,
        c.n_vocab as u32,
        c.n_layer as u32,
        c.n_embd as u32,
        c.n_head as u32,
        c.n_head_kv as u32,
        c.head_dim as u32,
        c.n_ff as u32,
    ];
    let f = model.file();
    let mut w = Checksum::new();
    w.update(&(f.file_size() as u64).to_le_bytes());
    w.update(&(f.data_offset() as u64).to_le_bytes());
    for t in f.tensors() {
        let info = f.tensor_info(t.name);
        w.update(&(t.name.len() as u64).to_le_bytes());
        w.update(t.name.as_bytes());
        w.update(&(t.ty as u32).to_le_bytes());
        for &d in t.dims {
            w.update(&(d as u64).to_le_bytes());
        }
        w.update(&info.map_or(0, |i| i.offset).to_le_bytes());
        let n = t.data.len();
        w.update(&t.data[..n.min(SAMPLE)]);
        w.update(&t.data[n.saturating_sub(SAMPLE)..]);
    }
    let mut s: Vec<u8> = Vec::with_capacity(128);
    let mut put = |x: u64| s.extend_from_slice(&x.to_le_bytes());
    put(c.rope_base.to_bits() as u64);
    put(c.rms_eps.to_bits() as u64);
    put(c.seq_length as u64);
    put(c.use_dynamic_ntk as u64);
    put(c.use_logn_attn as u64);
    match &c.rope_scaling {
        RopeScaling::None => put(0),
        RopeScaling::Linear { factor } => {
            put(1);
            put(factor.to_bits());
        }
        RopeScaling::Yarn(y) => {
            put(2);
            put(y.factor.to_bits());
            put(y.original_context as u64);
            put(y.beta_fast.to_bits());
            put(y.beta_slow.to_bits());
            put(y.ext_factor.to_bits());
            put(y.attn_factor.map_or(0, f64::to_bits));
        }
    }
    Fingerprint {
        shape,
        weights: w.finish(),
        settings: hash(&[&s]),
    }
}

fn kv_type_id(t: KvCacheType) -> u32 {
    match t {
        KvCacheType::F32 => 0,
        KvCacheType::F16 => 1,
        KvCacheType::Q8 => 2,
    }
}

fn kv_type_of(id: u32) -> Option<KvCacheType> {
    match id {
        0 => Some(KvCacheType::F32),
        1 => Some(KvCacheType::F16),
        2 => Some(KvCacheType::Q8),
        _ => None,
    }
}

/// Cache bytes of a sequence of `len` tokens: keys and values of every layer.
fn seq_kv_bytes(fp: &Fingerprint, ty: KvCacheType, len: usize) -> usize {
    let [_, _, n_layer, _, _, n_head_kv, head_dim, _] = fp.shape.map(|v| v as usize);
    n_layer * ty.bytes_per_token(1, n_head_kv, head_dim) * len
}

/// One saved sequence.
#[derive(Clone, Debug)]
struct SavedSeq {
    tokens: Vec<u32>,
    ntk_alpha: f64,
}

/// A session state read and checked against a model, ready to restore into a session with
/// [`Session::restore_state`]. Reading validates everything that does not depend on the
/// session (format, checksum, model); restoring checks the session's cache type, sequences and
/// context length.
pub struct SessionState {
    fingerprint: Fingerprint,
    kv_type: KvCacheType,
    n_ctx: usize,
    seqs: Vec<SavedSeq>,
    logits: Vec<f32>,
    sampler: Option<(SamplingParams, [u64; 4])>,
    user_data: Vec<u8>,
    /// The cache rows in file order; emptied by [`Session::load_state`] once restored.
    kv: Vec<u8>,
    n_bytes: u64,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("kv_type", &self.kv_type)
            .field("n_ctx", &self.n_ctx)
            .field(
                "seq_lens",
                &self.seqs.iter().map(|s| s.tokens.len()).collect::<Vec<_>>(),
            )
            .field("sampler", &self.sampler.as_ref().map(|(p, _)| p))
            .field("user_data_len", &self.user_data.len())
            .field("n_bytes", &self.n_bytes)
            .finish()
    }
}

/// Reads fields while summing them; a short read is a truncation error naming the offset.
struct In<R: Read> {
    r: R,
    sum: Checksum,
    pos: u64,
}

impl<R: Read> In<R> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        // `take` + `read_to_end` grows the buffer as data arrives, so a corrupt length costs
        // no more memory than the file really has (beyond a bounded first reservation).
        let mut v = Vec::with_capacity(n.min(16 << 20));
        (&mut self.r)
            .take(n as u64)
            .read_to_end(&mut v)
            .map_err(|e| Error::io("session state", e))?;
        if v.len() < n {
            return Err(bad(format!(
                "truncated: the file ends at byte {} inside the {what}",
                self.pos + v.len() as u64
            )));
        }
        self.sum.update(&v);
        self.pos += n as u64;
        Ok(v)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let v = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
}

fn describe_shape(s: &[u32; 8]) -> String {
    let arch = match s[0] {
        0 => "qwen".to_string(),
        1 => "qwen2".to_string(),
        n => format!("arch #{n}"),
    };
    format!(
        "{arch}, vocabulary {}, {} layers, width {}, {} heads ({} kv) of {}, MLP {}",
        s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    )
}

impl SessionState {
    /// Reads a state saved by [`Session::save_state_with`] and checks it against `model`:
    /// magic, version, model fingerprint, every count and token id, and the checksum. Nothing
    /// panics on bad input; each problem is an [`Error::State`] that says what is wrong.
    pub fn read(model: &Model, r: impl Read) -> Result<SessionState> {
        let mut r = In {
            r,
            sum: Checksum::new(),
            pos: 0,
        };
        let magic = r.array::<8>("header").map_err(|e| match e {
            Error::State(_) => bad("not a libqwen session state (the file is too short)"),
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(bad("not a libqwen session state (bad magic)"));
        }
        let version = r.u32("header")?;
        if version != STATE_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads version {STATE_VERSION}"
            )));
        }
        let want = fingerprint(model);
        let mut shape = [0u32; 8];
        for v in &mut shape {
            *v = r.u32("model header")?;
        }
        let weights = r.u64("model header")?;
        let settings = r.u64("model header")?;
        if shape != want.shape {
            return Err(bad(format!(
                "saved with another model ({}); this one is {}",
                describe_shape(&shape),
                describe_shape(&want.shape)
            )));
        }
        if weights != want.weights {
            return Err(bad(
                "saved with another model file (same shape, but other weights or tensor types)",
            ));
        }
        if settings != want.settings {
            return Err(bad(
                "saved with other model settings (RoPE scaling, dynamic NTK or logN attention \
                 differ from this model's)",
            ));
        }
        let fp = Fingerprint {
            shape,
            weights,
            settings,
        };
        let kv_id = r.u32("cache header")?;
        let kv_type =
            kv_type_of(kv_id).ok_or_else(|| bad(format!("unknown KV cache type #{kv_id}")))?;
        let n_ctx = r.u32("cache header")? as usize;
        if n_ctx == 0 || n_ctx > MAX_CTX {
            return Err(bad(format!("context length {n_ctx} is out of range")));
        }
        let n_seq = r.u32("cache header")? as usize;
        if n_seq == 0 || n_seq > MAX_SEQ {
            return Err(bad(format!("{n_seq} sequences is out of range")));
        }
        let n_vocab = model.config.n_vocab;
        let mut seqs = Vec::with_capacity(n_seq);
        for i in 0..n_seq {
            let n = r.u32("sequence header")? as usize;
            if n > n_ctx {
                return Err(bad(format!(
                    "sequence {i} holds {n} tokens, more than its context of {n_ctx}"
                )));
            }
            let ntk_alpha = r.f64("sequence header")?;
            let plausible = if model.config.use_dynamic_ntk {
                ntk_alpha.is_finite() && ntk_alpha >= 1.0
            } else {
                ntk_alpha == 1.0
            };
            if !plausible {
                return Err(bad(format!(
                    "sequence {i} has NTK alpha {ntk_alpha}, which this model cannot produce"
                )));
            }
            let raw = r.bytes(4 * n, "token list")?;
            let tokens: Vec<u32> = raw
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(bad(format!(
                    "sequence {i} holds token id {t}, outside the vocabulary of {n_vocab}"
                )));
            }
            seqs.push(SavedSeq { tokens, ntk_alpha });
        }
        let logits: Vec<f32> = r
            .bytes(4 * n_vocab, "logits")?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let sampler = match r.u32("sampler flag")? {
            0 => None,
            1 => {
                let temperature = r.f32("sampler")?;
                let top_p = r.f32("sampler")?;
                let top_k = r.u64("sampler")?;
                let repetition_penalty = r.f32("sampler")?;
                let seed = r.u64("sampler")?;
                let mut state = [0u64; 4];
                for s in &mut state {
                    *s = r.u64("sampler")?;
                }
                let finite = [temperature, top_p, repetition_penalty]
                    .iter()
                    .all(|x| x.is_finite());
                if !finite || temperature < 0.0 || Rng::from_state(state).is_none() {
                    return Err(bad("the saved sampler's parameters or state are invalid"));
                }
                let top_k = usize::try_from(top_k)
                    .map_err(|_| bad("the saved sampler's top_k is out of range"))?;
                let params = SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                    repetition_penalty,
                    seed,
                };
                Some((params, state))
            }
            other => return Err(bad(format!("sampler flag {other} (expected 0 or 1)"))),
        };
        let n_user = r.u32("user data length")? as usize;
        if n_user > MAX_USER_DATA {
            return Err(bad(format!("{n_user} bytes of user data is too many")));
        }
        let user_data = r.bytes(n_user, "user data")?;
        let kv_len: usize = seqs
            .iter()
            .map(|s| seq_kv_bytes(&fp, kv_type, s.tokens.len()))
            .sum();
        let kv = r.bytes(kv_len, "KV cache data")?;
        let computed = r.sum.finish();
        let stored = u64::from_le_bytes(r.array("checksum")?);
        if stored != computed {
            return Err(bad(
                "checksum mismatch: the file is corrupt (or was changed after saving)",
            ));
        }
        let mut extra = [0u8; 1];
        let trailing = loop {
            match r.r.read(&mut extra) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("session state", e)),
            }
        };
        if trailing != 0 {
            return Err(bad(format!(
                "trailing bytes after the checksum at byte {}",
                r.pos
            )));
        }
        Ok(SessionState {
            fingerprint: fp,
            kv_type,
            n_ctx,
            seqs,
            logits,
            sampler,
            user_data,
            kv,
            n_bytes: r.pos,
        })
    }

    /// [`read`](Self::read) from a file.
    pub fn read_file(model: &Model, path: impl AsRef<Path>) -> Result<SessionState> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::read(model, std::io::BufReader::with_capacity(1 << 20, f)).map_err(|e| match e {
            Error::State(m) => Error::State(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// The KV cache type the state holds (a session must use the same one to restore it).
    pub fn kv_cache_type(&self) -> KvCacheType {
        self.kv_type
    }

    /// The context length of the session that saved it.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Sequences saved (the session that restores it needs at least this many).
    pub fn n_seq(&self) -> usize {
        self.seqs.len()
    }

    /// The tokens of sequence `seq` (empty for a sequence it does not hold).
    pub fn seq_tokens(&self, seq: usize) -> &[u32] {
        self.seqs.get(seq).map_or(&[], |s| &s.tokens)
    }

    /// The longest saved sequence, in tokens (the restoring session's context must hold it).
    pub fn max_seq_len(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(0)
    }

    /// The sampling parameters saved with the state, if a sampler was.
    pub fn sampling_params(&self) -> Option<&SamplingParams> {
        self.sampler.as_ref().map(|(p, _)| p)
    }

    /// The saved sampler, continuing its random stream where it was when saved.
    pub fn sampler(&self) -> Option<Sampler> {
        let (params, state) = self.sampler.as_ref()?;
        Some(Sampler::with_rng(params.clone(), Rng::from_state(*state)?))
    }

    /// The application bytes saved with the state.
    pub fn user_data(&self) -> &[u8] {
        &self.user_data
    }

    /// Size of the state as read, in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

/// Writes fields while summing them.
struct Out<W: Write> {
    w: W,
    sum: Checksum,
    n: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.sum.update(b);
        self.n += b.len() as u64;
        self.w
            .write_all(b)
            .map_err(|e| Error::io("session state", e))
    }
    fn u32(&mut self, v: u32) -> Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn f32(&mut self, v: f32) -> Result<()> {
        self.put(&v.to_le_bytes())
    }
}

impl Session {
    /// Saves the session's state (see [`save_state_with`](Self::save_state_with)) without a
    /// sampler or user data. Returns the bytes written.
    pub fn save_state(&self, w: impl Write) -> Result<u64> {
        self.save_state_with(w, None, &[])
    }

    /// Saves every sequence's tokens and KV cache, the last logits, the NTK alphas, `sampler`'s
    /// parameters and random state (when given) and `user_data` (at most
    /// [`MAX_USER_DATA`] bytes, stored verbatim) to `w`. The format is described in the
    /// module docs; [`SessionState::read`] and [`restore_state`](Self::restore_state) or
    /// [`load_state`](Self::load_state) bring it back. Returns the bytes written.
    pub fn save_state_with(
        &self,
        w: impl Write,
        sampler: Option<&Sampler>,
        user_data: &[u8],
    ) -> Result<u64> {
        if user_data.len() > MAX_USER_DATA {
            return Err(Error::InvalidArgument(format!(
                "{} bytes of user data (at most {MAX_USER_DATA})",
                user_data.len()
            )));
        }
        let kv = self.host_kv()?;
        let fp = fingerprint(&self.model);
        let mut o = Out {
            w,
            sum: Checksum::new(),
            n: 0,
        };
        o.put(MAGIC)?;
        o.u32(STATE_VERSION)?;
        for v in fp.shape {
            o.u32(v)?;
        }
        o.u64(fp.weights)?;
        o.u64(fp.settings)?;
        o.u32(kv_type_id(kv.ty()))?;
        o.u32(self.n_ctx() as u32)?;
        o.u32(self.n_seq() as u32)?;
        for (seq, tokens) in self.seqs.iter().enumerate() {
            o.u32(tokens.len() as u32)?;
            o.put(&self.ntk_alpha[seq].to_le_bytes())?;
            let mut raw = Vec::with_capacity(tokens.len() * 4);
            for t in tokens {
                raw.extend_from_slice(&t.to_le_bytes());
            }
            o.put(&raw)?;
        }
        let mut raw = Vec::with_capacity(self.logits().len() * 4);
        for x in self.logits() {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        o.put(&raw)?;
        match sampler {
            None => o.u32(0)?,
            Some(s) => {
                o.u32(1)?;
                o.f32(s.params.temperature)?;
                o.f32(s.params.top_p)?;
                o.u64(s.params.top_k as u64)?;
                o.f32(s.params.repetition_penalty)?;
                o.u64(s.params.seed)?;
                for x in s.rng().state() {
                    o.u64(x)?;
                }
            }
        }
        o.u32(user_data.len() as u32)?;
        o.put(user_data)?;
        let mut buf = Vec::new();
        for (seq, tokens) in self.seqs.iter().enumerate() {
            for layer in 0..self.model.config.n_layer {
                buf.clear();
                kv.export_rows(layer, seq, tokens.len(), &mut buf);
                o.put(&buf)?;
            }
        }
        let sum = o.sum.finish();
        o.u64(sum)?;
        o.w.flush().map_err(|e| Error::io("session state", e))?;
        Ok(o.n)
    }

    /// [`save_state_with`](Self::save_state_with) to a file, written under a temporary name
    /// and renamed into place, so an interrupted save never leaves a partial file at `path`.
    pub fn save_state_file(
        &self,
        path: impl AsRef<Path>,
        sampler: Option<&Sampler>,
        user_data: &[u8],
    ) -> Result<u64> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let result = (|| {
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let n = self
                .save_state_with(&mut w, sampler, user_data)
                .map_err(|e| match e {
                    Error::Io { source, .. } => Error::io(&tmp, source),
                    e => e,
                })?;
            let f = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Restores a state read by [`SessionState::read`]: every saved sequence's tokens, NTK
    /// alpha and cache contents, and the last logits; sequences the state does not hold are
    /// cleared. The session must run the same model file (with the same settings), use the
    /// state's KV cache type, hold at least its sequences, and have a context long enough for
    /// each. On any error the session is unchanged.
    pub fn restore_state(&mut self, st: &SessionState) -> Result<()> {
        if fingerprint(&self.model) != st.fingerprint {
            return Err(bad(
                "saved with another model file or other model settings than this session's",
            ));
        }
        let kv_type = self.host_kv()?.ty();
        if st.kv_type != kv_type {
            return Err(bad(format!(
                "the state holds a {} KV cache; this session's is {}",
                st.kv_type.as_str(),
                kv_type.as_str()
            )));
        }
        if st.seqs.len() > self.n_seq() {
            return Err(bad(format!(
                "the state holds {} sequences; this session holds {}",
                st.seqs.len(),
                self.n_seq()
            )));
        }
        if let Some((i, s)) = st
            .seqs
            .iter()
            .enumerate()
            .find(|(_, s)| s.tokens.len() > self.n_ctx())
        {
            return Err(bad(format!(
                "sequence {i} holds {} tokens; this session's context holds {}",
                s.tokens.len(),
                self.n_ctx()
            )));
        }
        let expected: usize = st
            .seqs
            .iter()
            .map(|s| seq_kv_bytes(&st.fingerprint, st.kv_type, s.tokens.len()))
            .sum();
        if st.kv.len() != expected {
            return Err(bad(
                "the state's cache data was already released (it was restored by load_state)",
            ));
        }
        let mut at = 0;
        for (seq, s) in st.seqs.iter().enumerate() {
            let len = s.tokens.len();
            let n_layer = self.model.config.n_layer;
            let kv = self.host_kv_mut()?;
            let n = kv.rows_bytes(len);
            for layer in 0..n_layer {
                kv.import_rows(layer, seq, len, &st.kv[at..at + n]);
                at += n;
            }
            self.seqs[seq].clear();
            self.seqs[seq].extend_from_slice(&s.tokens);
            self.set_ntk_alpha(seq, s.ntk_alpha);
            if self.host_kv_mut()?.records_rotations() {
                // The angles are a function of the position and the sequence's frequencies
                // (fixed by its NTK alpha), so they are recomputed rather than stored.
                let model = Arc::clone(&self.model);
                let c = &model.config;
                let half = c.head_dim / 2;
                let (mut cos, mut sin) = (vec![0.0; half], vec![0.0; half]);
                for pos in 0..len {
                    crate::backend::cpu::ops::rope_table(
                        pos,
                        &self.inv_freq[seq * half..(seq + 1) * half],
                        c.rope_attn_factor(),
                        &mut cos,
                        &mut sin,
                    );
                    self.host_kv_mut()?.set_rotation(seq, pos, &cos, &sin);
                }
            }
        }
        for seq in st.seqs.len()..self.n_seq() {
            self.seqs[seq].clear();
        }
        let n_vocab = self.model.config.n_vocab;
        self.logits[..n_vocab].copy_from_slice(&st.logits);
        Ok(())
    }

    /// Reads a state from `r` and restores it ([`SessionState::read`], then
    /// [`restore_state`](Self::restore_state)). The returned state carries the saved sampler
    /// and user data; its cache bytes are released. On any error the session is unchanged.
    pub fn load_state(&mut self, r: impl Read) -> Result<SessionState> {
        let mut st = SessionState::read(&self.model, r)?;
        self.restore_state(&st)?;
        st.kv = Vec::new();
        Ok(st)
    }

    /// [`load_state`](Self::load_state) from a file.
    pub fn load_state_file(&mut self, path: impl AsRef<Path>) -> Result<SessionState> {
        let mut st = SessionState::read_file(&self.model, path)?;
        self.restore_state(&st)?;
        st.kv = Vec::new();
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_single_byte_change_and_length() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        let base = {
            let mut c = Checksum::new();
            c.update(&data);
            c.finish()
        };
        // Fed in pieces of any size: the same sum.
        for split in [1, 7, 31, 32, 33, 100] {
            let mut c = Checksum::new();
            for part in data.chunks(split) {
                c.update(part);
            }
            assert_eq!(c.finish(), base, "split {split}");
        }
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                let mut c = Checksum::new();
                c.update(&d);
                assert_ne!(c.finish(), base, "byte {i} bit {bit}");
            }
        }
        let mut c = Checksum::new();
        c.update(&data[..199]);
        assert_ne!(c.finish(), base);
        let mut longer = data.clone();
        longer.push(0);
        let mut c = Checksum::new();
        c.update(&longer);
        assert_ne!(c.finish(), base);
    }
}
