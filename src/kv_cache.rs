//! The key/value cache, preallocated for every sequence's whole context at session creation.
//!
//! Layout: `[layer][sequence][position][kv_head][head_dim]`, so one layer of one sequence is
//! contiguous. Three storage types:
//! - `F32`: exact (what the fp32 goldens are checked with);
//! - `F16`: half the memory, what llama.cpp uses by default;
//! - `Q8`: int8 per element with one f32 scale per block of [`Q8_BLOCK`] values of a (position,
//!   kv head) row (`scale = max|x| / 127`, round to nearest); a head row of 64 takes 72 bytes,
//!   28% of F32. Keys are stored *without* the model's key bias: Qwen's k bias puts a few
//!   channels far above the rest (in F16 too, whose error grows with magnitude), so int8 rows
//!   of the biased keys lose most of the token-dependent part. Since RoPE is linear,
//!   `rope(k) = rope(k - b) + rope(b)`: the cache quantizes `rope(k - b)` and attention adds
//!   `q · rope(b)` exactly from the position's recorded cos/sin (see [`KeyBias`]). On the real
//!   0.5B model this halves the logit error of the Q8 cache (RMS 0.16 → 0.08, F16's level).
//!
//! Attention reads the cache through [`KvRows`], implemented once per storage type, so the
//! attention loop is written once and compiled for each.

use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use crate::quant::{f16_to_f32, f32_to_f16};

/// Values per Q8 scale (the whole head row when `head_dim` is not a multiple of it).
pub const Q8_BLOCK: usize = 32;

pub fn q8_block(head_dim: usize) -> usize {
    if head_dim.is_multiple_of(Q8_BLOCK) {
        Q8_BLOCK
    } else {
        head_dim
    }
}

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheType {
    F32,
    F16,
    Q8,
}

impl KvCacheType {
    pub fn parse(s: &str) -> Result<KvCacheType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvCacheType::F32),
            "f16" => Ok(KvCacheType::F16),
            "q8" | "q8_0" | "int8" => Ok(KvCacheType::Q8),
            other => Err(Error::InvalidArgument(format!(
                "KV cache type `{other}` (expected f32, f16 or q8)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheType::F32 => "f32",
            KvCacheType::F16 => "f16",
            KvCacheType::Q8 => "q8",
        }
    }

    /// Bytes one row of `head_dim` values takes (a Q8 row carries its f32 scales).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvCacheType::F32 => 4 * head_dim,
            KvCacheType::F16 => 2 * head_dim,
            KvCacheType::Q8 => head_dim + 4 * (head_dim / q8_block(head_dim)),
        }
    }

    /// Cache bytes per token of one sequence: keys and values of every layer and kv head.
    pub fn bytes_per_token(self, n_layer: usize, n_head_kv: usize, head_dim: usize) -> usize {
        2 * n_layer * n_head_kv * self.row_bytes(head_dim)
    }
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<[u8; 2]>),
    Q8 { q: Vec<i8>, scale: Vec<f32> },
}

impl Store {
    fn new(ty: KvCacheType, n_rows: usize, head_dim: usize) -> Store {
        let n = n_rows * head_dim;
        match ty {
            KvCacheType::F32 => Store::F32(vec![0.0; n]),
            KvCacheType::F16 => Store::F16(vec![[0; 2]; n]),
            KvCacheType::Q8 => Store::Q8 {
                q: vec![0; n],
                scale: vec![0.0; n / q8_block(head_dim)],
            },
        }
    }

    /// Writes rows `row0..row0 + x.len() / hd` from `x`.
    fn write(&mut self, row0: usize, hd: usize, x: &[f32]) {
        let at = row0 * hd;
        match self {
            Store::F32(d) => d[at..at + x.len()].copy_from_slice(x),
            Store::F16(d) => {
                for (o, &v) in d[at..at + x.len()].iter_mut().zip(x) {
                    *o = f32_to_f16(v);
                }
            }
            Store::Q8 { q, scale } => {
                let qb = q8_block(hd);
                for (b, block) in x.chunks_exact(qb).enumerate() {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    scale[at / qb + b] = d;
                    let out = &mut q[at + b * qb..at + (b + 1) * qb];
                    for (o, &v) in out.iter_mut().zip(block) {
                        *o = (v * id).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
    }

    /// Writes every page, so the cache's memory is committed now (a failure to get it shows at
    /// session creation, decode steps take no page faults, and RSS shows the real footprint).
    fn commit(&mut self) {
        fn touch<T: Copy>(v: &mut [T]) {
            let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
            for i in (0..v.len()).step_by(step) {
                // SAFETY: i < v.len(); a volatile write of the value already there.
                unsafe { std::ptr::write_volatile(&mut v[i], v[i]) };
            }
        }
        match self {
            Store::F32(d) => touch(d),
            Store::F16(d) => touch(d),
            Store::Q8 { q, scale } => {
                touch(q);
                touch(scale);
            }
        }
    }

    /// Appends rows `row0..row0 + n` as little-endian bytes: the elements, then (Q8) the scales.
    fn export(&self, row0: usize, n: usize, hd: usize, out: &mut Vec<u8>) {
        fn put<const N: usize, T: Copy>(out: &mut Vec<u8>, src: &[T], le: impl Fn(T) -> [u8; N]) {
            let start = out.len();
            out.resize(start + src.len() * N, 0);
            for (o, &v) in out[start..].chunks_exact_mut(N).zip(src) {
                o.copy_from_slice(&le(v));
            }
        }
        let (a, b) = (row0 * hd, (row0 + n) * hd);
        match self {
            Store::F32(d) => put(out, &d[a..b], f32::to_le_bytes),
            Store::F16(d) => put(out, &d[a..b], |h| h),
            Store::Q8 { q, scale } => {
                put(out, &q[a..b], i8::to_le_bytes);
                let qb = q8_block(hd);
                put(out, &scale[a / qb..b / qb], f32::to_le_bytes);
            }
        }
    }

    /// Overwrites rows `row0..row0 + n` from bytes laid out as [`export`](Self::export) writes
    /// them; returns how many bytes that took.
    fn import(&mut self, row0: usize, n: usize, hd: usize, bytes: &[u8]) -> usize {
        fn get<const N: usize, T>(
            dst: &mut [T],
            bytes: &[u8],
            from_le: impl Fn([u8; N]) -> T,
        ) -> usize {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(N)) {
                let mut a = [0u8; N];
                a.copy_from_slice(b);
                *d = from_le(a);
            }
            dst.len() * N
        }
        let (a, b) = (row0 * hd, (row0 + n) * hd);
        match self {
            Store::F32(d) => get(&mut d[a..b], bytes, f32::from_le_bytes),
            Store::F16(d) => get(&mut d[a..b], bytes, |h| h),
            Store::Q8 { q, scale } => {
                let used = get(&mut q[a..b], bytes, i8::from_le_bytes);
                let qb = q8_block(hd);
                used + get(
                    &mut scale[a / qb..b / qb],
                    &bytes[used..],
                    f32::from_le_bytes,
                )
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Store::F32(d) => d.len() * 4,
            Store::F16(d) => d.len() * 2,
            Store::Q8 { q, scale } => q.len() + scale.len() * 4,
        }
    }
}

/// Keys and values of every layer for `n_seq` sequences of up to `n_ctx` positions.
pub struct KvCache {
    ty: KvCacheType,
    n_layer: usize,
    n_seq: usize,
    n_ctx: usize,
    n_head_kv: usize,
    head_dim: usize,
    k: Store,
    v: Store,
    /// Set for Q8 caches of models with a key bias.
    key_bias: Option<KeyBias>,
}

/// What a Q8 cache needs to store keys without their bias and add it back exactly.
struct KeyBias {
    /// `[layer][n_head_kv * head_dim]`.
    bias: Vec<f32>,
    /// `[seq][pos][head_dim]`: the cos (first half) and sin (second half) each position's
    /// key was rotated with, recorded at store time (Qwen-1's NTK frequencies vary).
    rope: Vec<f32>,
    /// One token's centred keys, so storing allocates nothing.
    centred: Vec<f32>,
}

impl KvCache {
    pub fn with_type(
        ty: KvCacheType,
        n_layer: usize,
        n_seq: usize,
        n_ctx: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Self {
        let rows = n_layer * n_seq * n_ctx * n_head_kv;
        let mut k = Store::new(ty, rows, head_dim);
        let mut v = Store::new(ty, rows, head_dim);
        k.commit();
        v.commit();
        KvCache {
            ty,
            n_layer,
            n_seq,
            n_ctx,
            n_head_kv,
            head_dim,
            k,
            v,
            key_bias: None,
        }
    }

    /// Gives a Q8 cache the model's key bias (`[n_layer][n_head_kv * head_dim]`) so it stores
    /// keys without it (module docs). Other types store keys as they are and ignore this.
    pub fn set_key_bias(&mut self, bias: Vec<f32>) -> Result<()> {
        if self.ty != KvCacheType::Q8 {
            return Ok(());
        }
        let kv_dim = self.n_head_kv * self.head_dim;
        if bias.len() != self.n_layer * kv_dim || !self.head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "key bias of {} values for {} layers of {} (head_dim {})",
                bias.len(),
                self.n_layer,
                kv_dim,
                self.head_dim
            )));
        }
        let mut table = Store::F32(vec![0.0; self.n_seq * self.n_ctx * self.head_dim]);
        table.commit();
        let Store::F32(rope) = table else {
            unreachable!("built as F32 above")
        };
        self.key_bias = Some(KeyBias {
            bias,
            rope,
            centred: vec![0.0; kv_dim],
        });
        Ok(())
    }

    /// Whether keys carry their rotation angles beside them (a Q8 cache with a key bias):
    /// then rows brought back by [`import_rows`](Self::import_rows) need
    /// [`set_rotation`](Self::set_rotation) for each position too.
    pub fn records_rotations(&self) -> bool {
        self.key_bias.is_some()
    }

    /// Records the angles the key at `pos` of `seq` was rotated by, as storing it does.
    pub fn set_rotation(&mut self, seq: usize, pos: usize, cos: &[f32], sin: &[f32]) {
        if let Some(kb) = &mut self.key_bias {
            let (hd, half) = (self.head_dim, self.head_dim / 2);
            let at = (seq * self.n_ctx + pos) * hd;
            kb.rope[at..at + half].copy_from_slice(&cos[..half]);
            kb.rope[at + half..at + hd].copy_from_slice(&sin[..half]);
        }
    }

    /// Stores one token's rotated keys and values (`[n_head_kv * head_dim]` each) at `pos` of
    /// sequence `seq`; `cos`/`sin` (`head_dim / 2` each) are the angles its keys were rotated by.
    #[allow(clippy::too_many_arguments)]
    pub fn store_rotated(
        &mut self,
        layer: usize,
        seq: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
        cos: &[f32],
        sin: &[f32],
    ) {
        let r = self.row(layer, seq, pos);
        let Some(kb) = &mut self.key_bias else {
            return self.store_seq(layer, seq, pos, k, v);
        };
        let (hd, kv_dim) = (self.head_dim, self.n_head_kv * self.head_dim);
        let half = hd / 2;
        let at = (seq * self.n_ctx + pos) * hd;
        kb.rope[at..at + half].copy_from_slice(&cos[..half]);
        kb.rope[at + half..at + hd].copy_from_slice(&sin[..half]);
        let bias = &kb.bias[layer * kv_dim..(layer + 1) * kv_dim];
        for ((c, k), b) in kb
            .centred
            .chunks_exact_mut(hd)
            .zip(k.chunks_exact(hd))
            .zip(bias.chunks_exact(hd))
        {
            for i in 0..half {
                let (b0, b1) = (b[i], b[i + half]);
                c[i] = k[i] - (b0 * cos[i] - b1 * sin[i]);
                c[i + half] = k[i + half] - (b1 * cos[i] + b0 * sin[i]);
            }
        }
        self.k.write(r, hd, &kb.centred);
        self.v.write(r, hd, v);
    }

    pub fn ty(&self) -> KvCacheType {
        self.ty
    }

    /// Positions per sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn n_head_kv(&self) -> usize {
        self.n_head_kv
    }

    /// Bytes of cache per token of one sequence (all layers, keys and values).
    pub fn bytes_per_token(&self) -> usize {
        let rope = if self.key_bias.is_some() {
            self.head_dim * 4
        } else {
            0
        };
        self.ty
            .bytes_per_token(self.n_layer, self.n_head_kv, self.head_dim)
            + rope
    }

    /// Bytes the whole cache holds.
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes() + self.key_bias.as_ref().map_or(0, |kb| kb.rope.len() * 4)
    }

    fn row(&self, layer: usize, seq: usize, pos: usize) -> usize {
        ((layer * self.n_seq + seq) * self.n_ctx + pos) * self.n_head_kv
    }

    /// Stores keys and values (`[len, n_head_kv * head_dim]`) of sequence 0 from `pos` on.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        self.store_seq(layer, 0, pos, k, v);
    }

    /// Stores keys and values (`[len, n_head_kv * head_dim]`) of sequence `seq` from `pos` on.
    pub fn store_seq(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let r = self.row(layer, seq, pos);
        debug_assert!(pos * self.n_head_kv * self.head_dim + k.len() <= self.layer_len());
        self.k.write(r, self.head_dim, k);
        self.v.write(r, self.head_dim, v);
    }

    fn layer_len(&self) -> usize {
        self.n_ctx * self.n_head_kv * self.head_dim
    }

    /// One layer of every sequence, for attention.
    pub fn layer_view(&self, layer: usize) -> LayerView<'_> {
        let (hd, nkv) = (self.head_dim, self.n_head_kv);
        let rows = self.n_seq * self.n_ctx * nkv;
        let r0 = layer * rows;
        let geo = Geometry {
            n_ctx: self.n_ctx,
            n_head_kv: nkv,
            head_dim: hd,
        };
        let span = r0 * hd..(r0 + rows) * hd;
        match (&self.k, &self.v) {
            (Store::F32(k), Store::F32(v)) => LayerView::F32(RowsF32 {
                geo,
                k: &k[span.clone()],
                v: &v[span],
            }),
            (Store::F16(k), Store::F16(v)) => LayerView::F16(RowsF16 {
                geo,
                k: &k[span.clone()],
                v: &v[span],
            }),
            (Store::Q8 { q: kq, scale: ks }, Store::Q8 { q: vq, scale: vs }) => {
                let qb = q8_block(hd);
                let scales = span.start / qb..span.end / qb;
                let kv_dim = nkv * hd;
                let (bias, rope): (&[f32], &[f32]) = match &self.key_bias {
                    Some(kb) => (&kb.bias[layer * kv_dim..(layer + 1) * kv_dim], &kb.rope),
                    None => (&[], &[]),
                };
                LayerView::Q8(RowsQ8 {
                    geo,
                    qb,
                    k: &kq[span.clone()],
                    v: &vq[span],
                    ks: &ks[scales.clone()],
                    vs: &vs[scales],
                    bias,
                    rope,
                })
            }
            _ => unreachable!("keys and values share one type"),
        }
    }

    /// Bytes [`export_rows`](Self::export_rows) writes for `len` positions of one sequence in
    /// one layer (keys and values).
    pub fn rows_bytes(&self, len: usize) -> usize {
        2 * len * self.n_head_kv * self.ty.row_bytes(self.head_dim)
    }

    /// Appends the stored keys, then values, of positions `0..len` of sequence `seq` in `layer`
    /// to `out`, bit for bit (little-endian elements; for Q8 the int8 values, then the scales).
    pub fn export_rows(&self, layer: usize, seq: usize, len: usize, out: &mut Vec<u8>) {
        debug_assert!(len <= self.n_ctx);
        let (r, n) = (self.row(layer, seq, 0), len * self.n_head_kv);
        self.k.export(r, n, self.head_dim, out);
        self.v.export(r, n, self.head_dim, out);
    }

    /// Overwrites positions `0..len` of sequence `seq` in `layer` from what
    /// [`export_rows`](Self::export_rows) wrote: `bytes.len()` must be
    /// [`rows_bytes(len)`](Self::rows_bytes).
    pub fn import_rows(&mut self, layer: usize, seq: usize, len: usize, bytes: &[u8]) {
        assert!(
            len <= self.n_ctx && bytes.len() == self.rows_bytes(len),
            "import_rows: {} bytes for {len} positions",
            bytes.len()
        );
        let (r, n) = (self.row(layer, seq, 0), len * self.n_head_kv);
        let used = self.k.import(r, n, self.head_dim, bytes);
        self.v.import(r, n, self.head_dim, &bytes[used..]);
    }

    /// Keys and values of positions `0..len` of sequence 0 of a layer as f32 (`[len, kv_dim]`),
    /// decoded from whatever the storage is. For tests and inspection; allocates.
    pub fn read_f32(&self, layer: usize, seq: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let view = self.layer_view(layer);
        let n = self.n_head_kv * self.head_dim;
        let mut k = vec![0.0f32; len * n];
        let mut v = vec![0.0f32; len * n];
        for j in 0..len {
            for h in 0..self.n_head_kv {
                let at = j * n + h * self.head_dim;
                let (ko, vo) = (
                    &mut k[at..at + self.head_dim],
                    &mut v[at..at + self.head_dim],
                );
                match &view {
                    LayerView::F32(r) => r.decode(seq, j, h, ko, vo),
                    LayerView::F16(r) => r.decode(seq, j, h, ko, vo),
                    LayerView::Q8(r) => r.decode(seq, j, h, ko, vo),
                }
            }
        }
        (k, v)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    n_ctx: usize,
    n_head_kv: usize,
    head_dim: usize,
}

impl Geometry {
    #[inline(always)]
    fn row(&self, seq: usize, pos: usize, head: usize) -> usize {
        (seq * self.n_ctx + pos) * self.n_head_kv + head
    }

    /// Where `head`'s rows of `seq` start (position 0, in elements) and how far apart the
    /// positions are: the kv heads interleave.
    fn head_rows(&self, seq: usize, head: usize) -> (usize, usize) {
        let stride = self.n_head_kv * self.head_dim;
        (self.row(seq, 0, head) * self.head_dim, stride)
    }
}

/// One layer of the cache in its storage type.
pub enum LayerView<'a> {
    F32(RowsF32<'a>),
    F16(RowsF16<'a>),
    Q8(RowsQ8<'a>),
}

/// What attention needs from cached rows: `q · k[seq, pos, head]` and
/// `out += p * v[seq, pos, head]`.
pub trait KvRows: Sync {
    fn dot_k(&self, seq: usize, pos: usize, head: usize, q: &[f32]) -> f32;
    fn axpy_v(&self, seq: usize, pos: usize, head: usize, p: f32, out: &mut [f32]);
    /// `out[j]` = [`dot_k`](Self::dot_k) at position `j`, for positions `0..out.len()`: one
    /// query's scores against a head's cached keys (decode attention).
    fn scores(&self, seq: usize, head: usize, q: &[f32], out: &mut [f32]) {
        for (j, s) in out.iter_mut().enumerate() {
            *s = self.dot_k(seq, j, head, q);
        }
    }
    /// [`axpy_v`](Self::axpy_v) with weight `p[j]` at every position `j` in `0..p.len()`.
    fn weighted_values(&self, seq: usize, head: usize, p: &[f32], out: &mut [f32]) {
        for (j, &pj) in p.iter().enumerate() {
            self.axpy_v(seq, j, head, pj, out);
        }
    }
    /// The key and value rows as f32.
    fn decode(&self, seq: usize, pos: usize, head: usize, k: &mut [f32], v: &mut [f32]);
    /// Where the rows are stored as f32: the key and value rows of (`seq`, `head`) in place,
    /// from position 0 on (position `j` at `j * stride`), and `stride`. `None` for the other
    /// storage types, which are read through `decode`.
    fn f32_rows(&self, _seq: usize, _head: usize) -> Option<(&[f32], &[f32], usize)> {
        None
    }
}

pub struct RowsF32<'a> {
    geo: Geometry,
    k: &'a [f32],
    v: &'a [f32],
}

pub struct RowsF16<'a> {
    geo: Geometry,
    k: &'a [[u8; 2]],
    v: &'a [[u8; 2]],
}

pub struct RowsQ8<'a> {
    geo: Geometry,
    /// Values per scale.
    qb: usize,
    k: &'a [i8],
    v: &'a [i8],
    ks: &'a [f32],
    vs: &'a [f32],
    /// The layer's key bias (`[kv_head][head_dim]`), empty when keys are stored with it.
    bias: &'a [f32],
    /// `[seq][pos][head_dim]` cos | sin per position (see [`KeyBias`]).
    rope: &'a [f32],
}

impl RowsQ8<'_> {
    /// `q · rope(b)` for the key bias `b` of `head` rotated to `pos`'s angles.
    #[inline]
    fn bias_dot(&self, seq: usize, pos: usize, head: usize, q: &[f32]) -> f32 {
        let hd = self.geo.head_dim;
        let half = hd / 2;
        let b = &self.bias[head * hd..(head + 1) * hd];
        let at = (seq * self.geo.n_ctx + pos) * hd;
        let (cos, sin) = self.rope[at..at + hd].split_at(half);
        let mut s = 0.0;
        for i in 0..half {
            let (b0, b1, q0, q1) = (b[i], b[i + half], q[i], q[i + half]);
            s += cos[i] * (q0 * b0 + q1 * b1) + sin[i] * (q1 * b0 - q0 * b1);
        }
        s
    }

    /// Adds `rope(b)` of `head` at `pos` to a decoded key row.
    fn add_bias(&self, seq: usize, pos: usize, head: usize, k: &mut [f32]) {
        let hd = self.geo.head_dim;
        let half = hd / 2;
        let b = &self.bias[head * hd..(head + 1) * hd];
        let at = (seq * self.geo.n_ctx + pos) * hd;
        let (cos, sin) = self.rope[at..at + hd].split_at(half);
        for i in 0..half {
            let (b0, b1) = (b[i], b[i + half]);
            k[i] += b0 * cos[i] - b1 * sin[i];
            k[i + half] += b1 * cos[i] + b0 * sin[i];
        }
    }
}

impl KvRows for RowsF32<'_> {
    fn f32_rows(&self, seq: usize, head: usize) -> Option<(&[f32], &[f32], usize)> {
        let (at, stride) = self.geo.head_rows(seq, head);
        Some((&self.k[at..], &self.v[at..], stride))
    }

    #[inline]
    fn dot_k(&self, seq: usize, pos: usize, head: usize, q: &[f32]) -> f32 {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        crate::backend::cpu::ops::dot_f32(q, &self.k[at..at + hd])
    }
    fn scores(&self, seq: usize, head: usize, q: &[f32], out: &mut [f32]) {
        let (at, stride) = self.geo.head_rows(seq, head);
        ops::dot_rows_f32(q, &self.k[at..], stride, out);
    }
    fn weighted_values(&self, seq: usize, head: usize, p: &[f32], out: &mut [f32]) {
        let (at, stride) = self.geo.head_rows(seq, head);
        ops::axpy_rows_f32(out, p, &self.v[at..], stride);
    }
    #[inline]
    fn axpy_v(&self, seq: usize, pos: usize, head: usize, p: f32, out: &mut [f32]) {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        crate::backend::cpu::ops::axpy(out, p, &self.v[at..at + hd]);
    }
    fn decode(&self, seq: usize, pos: usize, head: usize, k: &mut [f32], v: &mut [f32]) {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        k.copy_from_slice(&self.k[at..at + hd]);
        v.copy_from_slice(&self.v[at..at + hd]);
    }
}

impl KvRows for RowsF16<'_> {
    fn scores(&self, seq: usize, head: usize, q: &[f32], out: &mut [f32]) {
        let (at, stride) = self.geo.head_rows(seq, head);
        ops::dot_rows_f16(q, &self.k[at..], stride, out);
    }
    fn weighted_values(&self, seq: usize, head: usize, p: &[f32], out: &mut [f32]) {
        let (at, stride) = self.geo.head_rows(seq, head);
        ops::axpy_rows_f16(out, p, &self.v[at..], stride);
    }
    #[inline]
    fn dot_k(&self, seq: usize, pos: usize, head: usize, q: &[f32]) -> f32 {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        let k = &self.k[at..at + hd];
        ops::dot_f32_with(q, |i| f16_to_f32(k[i]))
    }
    #[inline]
    fn axpy_v(&self, seq: usize, pos: usize, head: usize, p: f32, out: &mut [f32]) {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        for (o, &h) in out.iter_mut().zip(&self.v[at..at + hd]) {
            *o += p * f16_to_f32(h);
        }
    }
    fn decode(&self, seq: usize, pos: usize, head: usize, k: &mut [f32], v: &mut [f32]) {
        let hd = self.geo.head_dim;
        let at = self.geo.row(seq, pos, head) * hd;
        ops::f16_to_f32_row(&self.k[at..at + hd], &mut k[..hd]);
        ops::f16_to_f32_row(&self.v[at..at + hd], &mut v[..hd]);
    }
}

impl RowsQ8<'_> {
    /// Where (`seq`, `head`)'s rows start (elements; scales at this over the block size) and
    /// how they are laid out.
    fn layout(&self, seq: usize, head: usize) -> (usize, ops::Q8Rows) {
        let (at, stride) = self.geo.head_rows(seq, head);
        let lay = ops::Q8Rows {
            stride,
            scale_stride: stride / self.qb,
            block: self.qb,
        };
        (at, lay)
    }

    /// Adds [`bias_dot`](Self::bias_dot) at every position `j` to `out[j]`. Per position that is
    /// the dot of the position's cos|sin row with one vector made from `q` and the bias, so all
    /// positions go through the f32 row kernel.
    fn add_bias_scores(&self, seq: usize, head: usize, q: &[f32], out: &mut [f32]) {
        let hd = self.geo.head_dim;
        let half = hd / 2;
        let mut qb = [0f32; 256];
        if hd > qb.len() || !hd.is_multiple_of(2) {
            for (j, s) in out.iter_mut().enumerate() {
                *s += self.bias_dot(seq, j, head, q);
            }
            return;
        }
        let b = &self.bias[head * hd..(head + 1) * hd];
        for i in 0..half {
            let (b0, b1, q0, q1) = (b[i], b[i + half], q[i], q[i + half]);
            qb[i] = q0 * b0 + q1 * b1;
            qb[half + i] = q1 * b0 - q0 * b1;
        }
        let rope = &self.rope[seq * self.geo.n_ctx * hd..];
        let mut part = [0f32; 64];
        for (c, chunk) in out.chunks_mut(part.len()).enumerate() {
            let part = &mut part[..chunk.len()];
            ops::dot_rows_f32(&qb[..hd], &rope[c * 64 * hd..], hd, part);
            for (s, x) in chunk.iter_mut().zip(part.iter()) {
                *s += x;
            }
        }
    }
}

impl KvRows for RowsQ8<'_> {
    fn scores(&self, seq: usize, head: usize, q: &[f32], out: &mut [f32]) {
        let (at, lay) = self.layout(seq, head);
        ops::dot_rows_q8(q, &self.k[at..], &self.ks[at / self.qb..], lay, out);
        if !self.bias.is_empty() {
            self.add_bias_scores(seq, head, q, out);
        }
    }
    fn weighted_values(&self, seq: usize, head: usize, p: &[f32], out: &mut [f32]) {
        let (at, lay) = self.layout(seq, head);
        ops::axpy_rows_q8(out, p, &self.v[at..], &self.vs[at / self.qb..], lay);
    }
    #[inline]
    fn dot_k(&self, seq: usize, pos: usize, head: usize, q: &[f32]) -> f32 {
        let (hd, qb) = (self.geo.head_dim, self.qb);
        let at = self.geo.row(seq, pos, head) * hd;
        let mut sum = 0.0;
        for b in 0..hd / qb {
            let k = &self.k[at + b * qb..at + (b + 1) * qb];
            let qs = &q[b * qb..(b + 1) * qb];
            sum += self.ks[at / qb + b] * ops::dot_f32_with(qs, |i| k[i] as f32);
        }
        if !self.bias.is_empty() {
            sum += self.bias_dot(seq, pos, head, q);
        }
        sum
    }
    #[inline]
    fn axpy_v(&self, seq: usize, pos: usize, head: usize, p: f32, out: &mut [f32]) {
        let (hd, qb) = (self.geo.head_dim, self.qb);
        let at = self.geo.row(seq, pos, head) * hd;
        for b in 0..hd / qb {
            let a = p * self.vs[at / qb + b];
            let v = &self.v[at + b * qb..at + (b + 1) * qb];
            for (o, &x) in out[b * qb..(b + 1) * qb].iter_mut().zip(v) {
                *o += a * x as f32;
            }
        }
    }
    fn decode(&self, seq: usize, pos: usize, head: usize, k: &mut [f32], v: &mut [f32]) {
        let (hd, qb) = (self.geo.head_dim, self.qb);
        let at = self.geo.row(seq, pos, head) * hd;
        for i in 0..hd {
            k[i] = self.ks[(at + i) / qb] * self.k[at + i] as f32;
            v[i] = self.vs[(at + i) / qb] * self.v[at + i] as f32;
        }
        if !self.bias.is_empty() {
            self.add_bias(seq, pos, head, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_within_its_precision() {
        let (n_layer, n_seq, n_ctx, nkv, hd) = (2, 2, 5, 2, 16);
        let x: Vec<f32> = (0..3 * nkv * hd)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let y: Vec<f32> = x.iter().map(|v| -v * 0.5 + 0.1).collect();
        for (ty, tol) in [
            (KvCacheType::F32, 0.0),
            (KvCacheType::F16, 2e-3),
            (KvCacheType::Q8, 0.02),
        ] {
            let mut c = KvCache::with_type(ty, n_layer, n_seq, n_ctx, nkv, hd);
            c.store_seq(1, 1, 2, &x, &y);
            let (k, v) = c.read_f32(1, 1, 5);
            let n = nkv * hd;
            assert!(
                k[..2 * n].iter().all(|&a| a == 0.0),
                "{ty:?}: other positions untouched"
            );
            for (a, b) in k[2 * n..].iter().zip(&x).chain(v[2 * n..].iter().zip(&y)) {
                assert!(
                    (a - b).abs() <= tol * b.abs().max(1.0),
                    "{ty:?}: {a} vs {b}"
                );
            }
            // Sequence 0 and layer 0 are untouched.
            assert!(c.read_f32(1, 0, 5).0.iter().all(|&a| a == 0.0));
            assert!(c.read_f32(0, 1, 5).0.iter().all(|&a| a == 0.0));
            // dot_k and axpy_v agree with the decoded rows.
            let q: Vec<f32> = (0..hd).map(|i| i as f32 * 0.1 - 0.7).collect();
            let view = c.layer_view(1);
            let (dot, mut out) = match &view {
                LayerView::F32(r) => (r.dot_k(1, 3, 1, &q), {
                    let mut o = vec![0.0; hd];
                    r.axpy_v(1, 3, 1, 2.0, &mut o);
                    o
                }),
                LayerView::F16(r) => (r.dot_k(1, 3, 1, &q), {
                    let mut o = vec![0.0; hd];
                    r.axpy_v(1, 3, 1, 2.0, &mut o);
                    o
                }),
                LayerView::Q8(r) => (r.dot_k(1, 3, 1, &q), {
                    let mut o = vec![0.0; hd];
                    r.axpy_v(1, 3, 1, 2.0, &mut o);
                    o
                }),
            };
            let krow = &k[3 * n + hd..3 * n + 2 * hd];
            let want: f32 = q.iter().zip(krow).map(|(a, b)| a * b).sum();
            assert!((dot - want).abs() < 1e-3, "{ty:?}");
            let vrow = &v[3 * n + hd..3 * n + 2 * hd];
            out.iter_mut().zip(vrow).for_each(|(o, v)| *o -= 2.0 * v);
            assert!(out.iter().all(|o| o.abs() < 1e-4), "{ty:?}");
        }
        assert_eq!(KvCacheType::Q8.bytes_per_token(24, 2, 64), 2 * 24 * 2 * 72);
    }

    /// The whole-head kernels of decode attention (`scores`, `weighted_values`) agree with the
    /// per-position `dot_k` / `axpy_v` for every storage type, head sizes on and off the SIMD
    /// steps, positions past the eight-key step, and an int8 cache with its key bias apart.
    #[test]
    fn whole_head_kernels_match_the_per_position_ones() {
        let (n_layer, n_seq, n_ctx, nkv) = (1, 2, 19, 2);
        for hd in [6, 16, 64, 72] {
            let kv_dim = nkv * hd;
            let rows = |seed: usize| -> Vec<f32> {
                (0..n_ctx * kv_dim)
                    .map(|i| (((i + seed) * 7919 % 1013) as f32 / 506.0 - 1.0) * 2.0)
                    .collect()
            };
            let (k, v) = (rows(1), rows(2));
            let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let p: Vec<f32> = (0..n_ctx).map(|j| 1.0 / (j + 2) as f32).collect();
            for (ty, bias) in [
                (KvCacheType::F32, false),
                (KvCacheType::F16, false),
                (KvCacheType::Q8, false),
                (KvCacheType::Q8, true),
            ] {
                let mut c = KvCache::with_type(ty, n_layer, n_seq, n_ctx, nkv, hd);
                if bias {
                    c.set_key_bias((0..kv_dim).map(|i| (i % 5) as f32).collect())
                        .unwrap();
                }
                for pos in 0..n_ctx {
                    let angles: Vec<f32> = (0..hd / 2).map(|i| (pos + i) as f32 * 0.3).collect();
                    let (cos, sin): (Vec<f32>, Vec<f32>) =
                        angles.iter().map(|a| (a.cos(), a.sin())).unzip();
                    let at = pos * kv_dim..(pos + 1) * kv_dim;
                    c.store_rotated(0, 1, pos, &k[at.clone()], &v[at], &cos, &sin);
                }
                let check = |r: &dyn KvRows| {
                    let mut got = vec![0.0; n_ctx];
                    r.scores(1, 1, &q, &mut got);
                    for (j, g) in got.iter().enumerate() {
                        let want = r.dot_k(1, j, 1, &q);
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{ty:?} hd {hd} pos {j}: {g} vs {want}"
                        );
                    }
                    let (mut got, mut want) = (vec![0.5; hd], vec![0.5; hd]);
                    r.weighted_values(1, 1, &p, &mut got);
                    for (j, &pj) in p.iter().enumerate() {
                        r.axpy_v(1, j, 1, pj, &mut want);
                    }
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{ty:?} hd {hd}: {g} vs {w}"
                        );
                    }
                };
                match c.layer_view(0) {
                    LayerView::F32(r) => check(&r),
                    LayerView::F16(r) => check(&r),
                    LayerView::Q8(r) => check(&r),
                }
            }
        }
    }

    /// A key with a large bias, stored rotated: with the bias given to the cache, `q · k` and
    /// the decoded key are exact to the int8 rounding of the token-dependent part only.
    #[test]
    fn q8_keys_without_their_bias_keep_the_small_part_precise() {
        let (n_layer, n_seq, n_ctx, nkv, hd) = (2, 2, 4, 2, 64);
        let kv_dim = nkv * hd;
        let half = hd / 2;
        let bias: Vec<f32> = (0..n_layer * kv_dim)
            .map(|i| if i % 17 == 3 { 90.0 } else { 0.3 })
            .collect();
        let small: Vec<f32> = (0..kv_dim)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.05)
            .collect();
        let angles: Vec<f32> = (0..half).map(|i| 3.0 * 0.7f32.powi(i as i32)).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        // The key the model computes: rope(small + bias).
        let layer = 1;
        let mut k: Vec<f32> = small
            .iter()
            .zip(&bias[layer * kv_dim..])
            .map(|(a, b)| a + b)
            .collect();
        for h in k.chunks_exact_mut(hd) {
            crate::backend::cpu::ops::rope_neox(h, &cos, &sin);
        }
        let v = vec![0.5; kv_dim];
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f32 = q.iter().zip(&k[hd..]).map(|(a, b)| a * b).sum();
        let err = |with_bias: bool| {
            let mut c = KvCache::with_type(KvCacheType::Q8, n_layer, n_seq, n_ctx, nkv, hd);
            if with_bias {
                c.set_key_bias(bias.clone()).unwrap();
            }
            c.store_rotated(layer, 1, 2, &k, &v, &cos, &sin);
            let LayerView::Q8(r) = c.layer_view(layer) else {
                unreachable!()
            };
            let (mut kd, mut vd) = (vec![0.0; hd], vec![0.0; hd]);
            r.decode(1, 2, 1, &mut kd, &mut vd);
            let row_err = kd
                .iter()
                .zip(&k[hd..])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            ((r.dot_k(1, 2, 1, &q) - want).abs(), row_err)
        };
        let (dot_plain, row_plain) = err(false);
        let (dot_centred, row_centred) = err(true);
        assert!(
            row_centred < 0.01 && dot_centred < 0.02,
            "{row_centred} {dot_centred}"
        );
        assert!(
            row_plain > 10.0 * row_centred,
            "{row_plain} vs {row_centred}"
        );
        assert!(
            dot_plain > 2.0 * dot_centred,
            "{dot_plain} vs {dot_centred}"
        );
        // Other cache types ignore the bias.
        let mut c = KvCache::with_type(KvCacheType::F16, n_layer, n_seq, n_ctx, nkv, hd);
        c.set_key_bias(bias.clone()).unwrap();
        assert_eq!(
            c.bytes_per_token(),
            KvCacheType::F16.bytes_per_token(n_layer, nkv, hd)
        );
        let mut c = KvCache::with_type(KvCacheType::Q8, n_layer, n_seq, n_ctx, nkv, hd);
        assert!(c.set_key_bias(vec![0.0; 3]).is_err());
    }

    #[test]
    fn exported_rows_import_bit_for_bit() {
        let (n_layer, n_seq, n_ctx, nkv, hd) = (2, 2, 6, 2, 64);
        let x: Vec<f32> = (0..4 * nkv * hd)
            .map(|i| ((i * 53 % 41) as f32 - 20.0) * 0.113)
            .collect();
        let y: Vec<f32> = x.iter().map(|v| v * -0.7 + 0.05).collect();
        for ty in [KvCacheType::F32, KvCacheType::F16, KvCacheType::Q8] {
            let mut a = KvCache::with_type(ty, n_layer, n_seq, n_ctx, nkv, hd);
            a.store_seq(1, 1, 0, &x, &y);
            let mut bytes = Vec::new();
            a.export_rows(1, 1, 4, &mut bytes);
            assert_eq!(bytes.len(), a.rows_bytes(4));
            assert_eq!(bytes.len(), 4 * ty.bytes_per_token(1, nkv, hd));
            let mut b = KvCache::with_type(ty, n_layer, n_seq, n_ctx, nkv, hd);
            b.import_rows(1, 1, 4, &bytes);
            let (ka, va) = a.read_f32(1, 1, n_ctx);
            let (kb, vb) = b.read_f32(1, 1, n_ctx);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ka), bits(&kb), "{ty:?}");
            assert_eq!(bits(&va), bits(&vb), "{ty:?}");
            assert!(b.read_f32(1, 0, n_ctx).0.iter().all(|&v| v == 0.0));
            assert!(b.read_f32(0, 1, n_ctx).0.iter().all(|&v| v == 0.0));
            let mut again = Vec::new();
            b.export_rows(1, 1, 4, &mut again);
            assert_eq!(again, bytes, "{ty:?}");
        }
    }
}
