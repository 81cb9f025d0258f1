//! The forward pass of `qwen` (Qwen-1) and `qwen2` (Qwen-1.5/2/2.5), written once as straight
//! math over a batch of consecutive tokens. Shapes in comments: T tokens in the batch, D model
//! width, H query heads, Hkv key/value heads, hd head size, F MLP width, V vocabulary.

use super::weights::{Attention, Tensor};
use super::Model;
use crate::backend::cpu::matmul::matmul_many;
use crate::backend::cpu::matmul::{activation_row_bytes, activation_scratch_bytes};
use crate::backend::cpu::{matmul, ops, ThreadPool, WeightMatrix};
use crate::kv_cache::{KvCache, KvRows, LayerView};

/// Buffers for one batch of up to `max_batch` tokens, allocated once per session.
pub struct Scratch {
    pub max_batch: usize,
    x: Vec<f32>,        // [T, D] residual stream
    xb: Vec<f32>,       // [T, D] normed input of a sub-layer
    q: Vec<f32>,        // [T, H*hd]
    k: Vec<f32>,        // [T, Hkv*hd]
    v: Vec<f32>,        // [T, Hkv*hd]
    qkv: Vec<f32>,      // [T, D + 2*Hkv*hd] (Qwen-1's fused projection)
    attn: Vec<f32>,     // [T, H*hd]
    proj: Vec<f32>,     // [T, D] output of a projection before the residual add
    gate: Vec<f32>,     // [T, F]
    up: Vec<f32>,       // [T, F]
    xq: Vec<u8>,        // quantized activations for the widest matmul input
    cos: Vec<f32>,      // [T, hd/2]
    sin: Vec<f32>,      // [T, hd/2]
    scores: Vec<f32>,   // [threads, n_ctx] attention weights, one row per worker
    attn_ws: Vec<f32>,  // [threads, AttnBlock::len] blocked attention's buffers
    blocks: Vec<usize>, // first token of each attention block, then T
}

impl Scratch {
    pub fn new(model: &Model, max_batch: usize, n_ctx: usize, n_threads: usize) -> Scratch {
        let c = &model.config;
        let kv = c.n_head_kv * c.head_dim;
        let widest = model
            .weights
            .matrices()
            .map(|t| activation_row_bytes(t.ty, t.cols))
            .max()
            .unwrap_or(0);
        let z = |n: usize| vec![0.0f32; n];
        Scratch {
            max_batch,
            x: z(max_batch * c.n_embd),
            xb: z(max_batch * c.n_embd),
            q: z(max_batch * c.n_embd),
            k: z(max_batch * kv),
            v: z(max_batch * kv),
            qkv: if matches!(model.weights.layers[0].attn, Attention::Fused { .. }) {
                z(max_batch * (c.n_embd + 2 * kv))
            } else {
                Vec::new()
            },
            attn: z(max_batch * c.n_embd),
            proj: z(max_batch * c.n_embd),
            gate: z(max_batch * c.n_ff),
            up: z(max_batch * c.n_ff),
            xq: vec![0u8; activation_scratch_bytes(max_batch, widest)],
            cos: z(max_batch * c.head_dim / 2),
            sin: z(max_batch * c.head_dim / 2),
            scores: z(n_threads.max(1) * n_ctx),
            attn_ws: z(n_threads.max(1) * AttnBlock::new(c.n_head / c.n_head_kv, c.head_dim).len),
            blocks: vec![0; max_batch + 1],
        }
    }
}

/// Shares one mutable buffer between workers that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only where each worker writes its own (t, head) rows and the pool joins them.
unsafe impl Sync for SharedMut {}
unsafe impl Send for SharedMut {}

impl SharedMut {
    /// A method, so closures capture the Sync wrapper and not its raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }

    /// Row `t` of a row-major buffer of rows of `width` floats.
    ///
    /// # Safety
    /// The row must lie inside the buffer, and no other reference to it may be live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row<'a>(self, t: usize, width: usize) -> &'a mut [f32] {
        // SAFETY: the caller guarantees the row is in bounds and not aliased.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(t * width), width) }
    }
}

/// The tokens of one forward pass. Token `t` belongs to sequence `seq[t]` (its slot in the KV
/// cache) at position `pos[t]`; a prefill is consecutive positions of one sequence, a batched
/// decode step one token of each of several sequences. Within a sequence, tokens come in
/// position order, and every earlier position is already in the cache or earlier in the batch.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub seq: &'a [usize],
    pub pos: &'a [usize],
    /// Logits are computed for tokens `logits_from..T`: `T - 1` for the last token only, 0 for
    /// all, `T` for none.
    pub logits_from: usize,
}

/// Runs a batch through the model, appending each token's key and value to its sequence in
/// `kv`, and writes the logits of tokens `logits_from..T` to `logits[..(T - logits_from) * V]`.
/// `inv_freq` holds each sequence's RoPE frequencies (`[n_seq, hd/2]`; NTK-adjusted for Qwen-1).
pub fn forward(
    model: &Model,
    pool: &ThreadPool,
    kv: &mut KvCache,
    s: &mut Scratch,
    inv_freq: &[f32],
    batch: &Batch,
    logits: &mut [f32],
) {
    let c = &model.config;
    let w = &model.weights;
    let (tokens, seq, pos) = (batch.tokens, batch.seq, batch.pos);
    let t_len = tokens.len();
    let (d, hd, n_head, n_kv) = (c.n_embd, c.head_dim, c.n_head, c.n_head_kv);
    let kv_dim = n_kv * hd;
    debug_assert!(t_len <= s.max_batch && seq.len() == t_len && pos.len() == t_len);
    debug_assert!(batch.logits_from <= t_len && pos.iter().all(|&p| p < kv.n_ctx()));

    // 1. Token embeddings: x[t] = token_embd[id].
    for (t, &id) in tokens.iter().enumerate() {
        let row = model.matrix(&w.token_embd).row(id as usize);
        crate::quant::dequantize_row(w.token_embd.ty, row, &mut s.x[t * d..(t + 1) * d])
            .expect("embedding row size is checked at load");
    }

    // RoPE angles for each token's position (with its sequence's frequencies), for all layers;
    // YaRN scales cos and sin by its attention factor (1 otherwise).
    let half = hd / 2;
    let mscale = c.rope_attn_factor();
    for t in 0..t_len {
        ops::rope_table(
            pos[t],
            &inv_freq[seq[t] * half..(seq[t] + 1) * half],
            mscale,
            &mut s.cos[t * half..(t + 1) * half],
            &mut s.sin[t * half..(t + 1) * half],
        );
    }

    for (li, layer) in w.layers.iter().enumerate() {
        // 2. Attention block: xb = RMSNorm(x); q, k, v = projections (+ bias).
        norm_rows(
            pool,
            &mut s.xb,
            &s.x,
            model.vector(&layer.attn_norm),
            c.rms_eps,
            t_len,
            d,
        );
        match &layer.attn {
            Attention::Fused { qkv, qkv_bias } => {
                // Qwen-1: [T, D] @ [D, D + 2*kv] -> split into q | k | v.
                let width = d + 2 * kv_dim;
                model.matmul(pool, qkv, &s.xb, t_len, &mut s.qkv, &mut s.xq);
                let bias = model.vector(qkv_bias);
                for t in 0..t_len {
                    let row = &mut s.qkv[t * width..(t + 1) * width];
                    ops::add_assign(row, bias);
                    s.q[t * d..(t + 1) * d].copy_from_slice(&row[..d]);
                    s.k[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&row[d..d + kv_dim]);
                    s.v[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&row[d + kv_dim..]);
                }
            }
            Attention::Split {
                q,
                q_bias,
                k,
                k_bias,
                v,
                v_bias,
            } => {
                let mut qkv = [
                    (model.matrix(q), &mut s.q[..]),
                    (model.matrix(k), &mut s.k[..]),
                    (model.matrix(v), &mut s.v[..]),
                ];
                matmul_many(pool, &mut qkv, &s.xb, t_len, &mut s.xq);
                add_bias_rows(&mut s.q, model.vector(q_bias), t_len);
                add_bias_rows(&mut s.k, model.vector(k_bias), t_len);
                add_bias_rows(&mut s.v, model.vector(v_bias), t_len);
            }
        }

        // 3. RoPE on q and k (rotate-half), then Qwen-1's logN scaling of each query row.
        let (qp, kp) = (SharedMut(s.q.as_mut_ptr()), SharedMut(s.k.as_mut_ptr()));
        let (cos, sin) = (&s.cos, &s.sin);
        assert!(s.q.len() >= t_len * d && s.k.len() >= t_len * kv_dim);
        par_tokens(pool, t_len, &|range| {
            for t in range {
                // SAFETY: row t of q ([T, D]) and of k ([T, kv]) lie inside them (checked
                // above) and each token is in exactly one thread's range.
                let (q, k) = unsafe { (qp.row(t, d), kp.row(t, kv_dim)) };
                let (cos, sin) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                for h in q.chunks_exact_mut(hd) {
                    ops::rope_neox(h, cos, sin);
                }
                for h in k.chunks_exact_mut(hd) {
                    ops::rope_neox(h, cos, sin);
                }
                let logn = c.logn_scale(pos[t]);
                if logn != 1.0 {
                    q.iter_mut().for_each(|x| *x *= logn);
                }
            }
        });

        // 4. Append k, v to the cache; causal attention of each query over its sequence's
        //    positions 0..=p.
        for t in 0..t_len {
            let (k, v) = (
                &s.k[t * kv_dim..(t + 1) * kv_dim],
                &s.v[t * kv_dim..(t + 1) * kv_dim],
            );
            let (cos, sin) = (
                &s.cos[t * half..(t + 1) * half],
                &s.sin[t * half..(t + 1) * half],
            );
            kv.store_rotated(li, seq[t], pos[t], k, v, cos, sin);
        }
        attention(pool, kv, li, s, batch, n_head, hd);

        // 5. x += attn @ Wo
        model.matmul(
            pool,
            &layer.attn_out,
            &s.attn,
            t_len,
            &mut s.proj,
            &mut s.xq,
        );
        ops::add_assign(&mut s.x[..t_len * d], &s.proj[..t_len * d]);

        // 6. MLP: x += down(silu(gate(xb)) * up(xb)), xb = RMSNorm(x).
        norm_rows(
            pool,
            &mut s.xb,
            &s.x,
            model.vector(&layer.ffn_norm),
            c.rms_eps,
            t_len,
            d,
        );
        let mut gate_up = [
            (model.matrix(&layer.ffn_gate), &mut s.gate[..]),
            (model.matrix(&layer.ffn_up), &mut s.up[..]),
        ];
        matmul_many(pool, &mut gate_up, &s.xb, t_len, &mut s.xq);
        let f = c.n_ff;
        let gp = SharedMut(s.gate.as_mut_ptr());
        let up = &s.up[..t_len * f];
        assert!(s.gate.len() >= t_len * f);
        par_tokens(pool, t_len, &|range| {
            for t in range {
                // SAFETY: row t of gate ([T, F]) lies inside it (checked above) and each token
                // is in exactly one thread's range.
                ops::silu_mul(unsafe { gp.row(t, f) }, &up[t * f..(t + 1) * f]);
            }
        });
        model.matmul(
            pool,
            &layer.ffn_down,
            &s.gate,
            t_len,
            &mut s.proj,
            &mut s.xq,
        );
        ops::add_assign(&mut s.x[..t_len * d], &s.proj[..t_len * d]);
    }

    // 7. Final norm and LM head for the tokens whose logits are wanted.
    let first = batch.logits_from;
    let n_out = t_len - first;
    if n_out == 0 {
        return;
    }
    let norm = model.vector(&w.output_norm);
    for t in 0..n_out {
        let src = &s.x[(first + t) * d..(first + t + 1) * d];
        ops::rms_norm(&mut s.xb[t * d..(t + 1) * d], src, norm, c.rms_eps);
    }
    model.matmul(pool, &w.output, &s.xb, n_out, logits, &mut s.xq);
}

/// Batches of at least this many tokens split their per-row work (norms, RoPE, SwiGLU) across
/// the pool; below it, waking the workers costs more than it saves.
const PAR_MIN_TOKENS: usize = 4;

/// `f(range)` over token indices `0..t_len`: split across the pool for a batch of several
/// tokens, on this thread for a short one.
fn par_tokens(pool: &ThreadPool, t_len: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    if t_len >= PAR_MIN_TOKENS {
        pool.for_ranges(t_len, f);
    } else {
        f(0..t_len);
    }
}

fn norm_rows(
    pool: &ThreadPool,
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
    t_len: usize,
    d: usize,
) {
    assert!(out.len() >= t_len * d);
    let op = SharedMut(out.as_mut_ptr());
    par_tokens(pool, t_len, &|range| {
        for t in range {
            // SAFETY: row t of `out` lies inside it (checked above) and each token is in
            // exactly one thread's range.
            ops::rms_norm(unsafe { op.row(t, d) }, &x[t * d..(t + 1) * d], w, eps);
        }
    });
}

fn add_bias_rows(x: &mut [f32], bias: &[f32], t_len: usize) {
    for row in x.chunks_exact_mut(bias.len()).take(t_len) {
        ops::add_assign(row, bias);
    }
}

/// softmax(q·kᵀ/√hd) · v for every (token, head), each token over positions `0..=pos[t]` of
/// its own sequence (the causal mask). Query head h reads key/value head h / (H / Hkv)
/// (grouped-query attention). The cache's storage type picks the row reader.
fn attention(
    pool: &ThreadPool,
    kv: &KvCache,
    layer: usize,
    s: &mut Scratch,
    batch: &Batch,
    n_head: usize,
    hd: usize,
) {
    let group = n_head / kv.n_head_kv();
    match kv.layer_view(layer) {
        LayerView::F32(rows) => attend(pool, &rows, kv.n_ctx(), s, batch, n_head, hd, group),
        LayerView::F16(rows) => attend(pool, &rows, kv.n_ctx(), s, batch, n_head, hd, group),
        LayerView::Q8(rows) => attend(pool, &rows, kv.n_ctx(), s, batch, n_head, hd, group),
    }
}

#[allow(clippy::too_many_arguments)]
fn attend<R: KvRows>(
    pool: &ThreadPool,
    rows: &R,
    n_ctx: usize,
    s: &mut Scratch,
    batch: &Batch,
    n_head: usize,
    hd: usize,
    group: usize,
) {
    if batch.tokens.len() > 1 {
        return attend_blocks(pool, rows, s, batch, n_head, hd, group);
    }
    let d = n_head * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let q = &s.q;
    let out = SharedMut(s.attn.as_mut_ptr());
    let scores = SharedMut(s.scores.as_mut_ptr());
    let n_tasks = batch.tokens.len() * n_head;
    // One (token, head) task at a time from the pool's shared counter: a worker slowed down by
    // another process takes fewer of them.
    pool.for_chunks(n_tasks, 1, &|tid, tasks| {
        // SAFETY: each worker owns row `tid` of the scores scratch (sized threads * n_ctx).
        let sc = unsafe { std::slice::from_raw_parts_mut(scores.get().add(tid * n_ctx), n_ctx) };
        for task in tasks {
            let (t, h) = (task / n_head, task % n_head);
            let (seq, n_keys) = (batch.seq[t], batch.pos[t] + 1);
            let qh = &q[t * d + h * hd..t * d + (h + 1) * hd];
            let kvh = h / group;
            let sc = &mut sc[..n_keys];
            rows.scores(seq, kvh, qh, sc);
            for s in sc.iter_mut() {
                *s *= scale;
            }
            ops::softmax(sc);
            // SAFETY: (t, h) tasks are distinct, so their output rows are disjoint.
            let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(t * d + h * hd), hd) };
            o.fill(0.0);
            rows.weighted_values(seq, kvh, sc, o);
        }
    });
}

/// Query tokens per block of the blocked attention.
const ATT_TOKENS: usize = 16;
/// Keys per chunk of the blocked attention.
const ATT_KEYS: usize = 64;

/// The buffers of one worker of the blocked attention, as offsets into one f32 slice: a block
/// has `rows = ATT_TOKENS * group` query rows (each token's query heads that share one kv head).
#[derive(Clone, Copy)]
struct AttnBlock {
    hd: usize,
    // At offset 0: [rows, hd] scaled queries.
    o: usize,  // [rows, hd] output accumulators
    s: usize,  // [rows, ATT_KEYS] scores, then weights
    kt: usize, // [hd, ATT_KEYS] a chunk of keys, transposed
    v: usize,  // [ATT_KEYS, hd] the chunk's values
    m: usize,  // [rows] running maximum score
    l: usize,  // [rows] running sum of weights
    k: usize,  // [ATT_KEYS, hd] the chunk's keys, decoded
    len: usize,
}

impl AttnBlock {
    fn new(group: usize, hd: usize) -> AttnBlock {
        let rows = ATT_TOKENS * group.max(1);
        let o = rows * hd;
        let s = o + rows * hd;
        let kt = s + rows * ATT_KEYS;
        let v = kt + hd * ATT_KEYS;
        let m = v + ATT_KEYS * hd;
        let l = m + rows;
        let k = l + rows;
        let len = k + ATT_KEYS * hd;
        AttnBlock {
            hd,
            o,
            s,
            kt,
            v,
            m,
            l,
            k,
            len,
        }
    }
}

/// Attention for a batch of several tokens, flash-attention style: the batch is cut into blocks
/// of up to [`ATT_TOKENS`] consecutive tokens of one sequence at consecutive positions; each
/// (block, kv head) task takes the block's query rows of every head sharing that kv head, walks
/// the keys `0..=` the block's last position in chunks of [`ATT_KEYS`] (each key decoded once per
/// task), computes the chunk's scores as one matrix product, applies the causal mask, updates a
/// running softmax (maximum, sum, rescaled output) and adds the weighted values as a second
/// matrix product. Tasks go to the workers through a shared counter, longest first.
fn attend_blocks<R: KvRows>(
    pool: &ThreadPool,
    rows: &R,
    s: &mut Scratch,
    batch: &Batch,
    n_head: usize,
    hd: usize,
    group: usize,
) {
    let t_len = batch.tokens.len();
    let (seq, pos) = (batch.seq, batch.pos);
    // Block starts: a new block at each change of sequence, break in positions, or full block.
    let mut n_blocks = 0;
    for t in 0..t_len {
        let starts = t == 0
            || seq[t] != seq[t - 1]
            || pos[t] != pos[t - 1] + 1
            || t - s.blocks[n_blocks - 1] == ATT_TOKENS;
        if starts {
            s.blocks[n_blocks] = t;
            n_blocks += 1;
        }
    }
    s.blocks[n_blocks] = t_len;
    let blocks = &s.blocks[..=n_blocks];
    let n_kv = n_head / group;
    let n_tasks = n_blocks * n_kv;
    let lay = AttnBlock::new(group, hd);
    let d = n_head * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let q = &s.q;
    let out = SharedMut(s.attn.as_mut_ptr());
    let ws = SharedMut(s.attn_ws.as_mut_ptr());
    pool.for_chunks(n_tasks, 1, &|tid, claimed| {
        // SAFETY: each worker owns slice `tid` of the workspace (sized threads * lay.len).
        let ws = unsafe { std::slice::from_raw_parts_mut(ws.get().add(tid * lay.len), lay.len) };
        for i in claimed {
            // Later blocks see more keys: hand them out first.
            let task = n_tasks - 1 - i;
            let (b, kvh) = (task / n_kv, task % n_kv);
            let (t0, t1) = (blocks[b], blocks[b + 1]);
            attend_block(
                rows,
                &lay,
                ws,
                q,
                (t0, t1),
                seq[t0],
                pos,
                kvh,
                group,
                d,
                scale,
            );
            // Copy the normalized outputs out.
            let (o, l) = (&ws[lay.o..lay.s], &ws[lay.l..lay.k]);
            for t in t0..t1 {
                for g in 0..group {
                    let row = (t - t0) * group + g;
                    let h = kvh * group + g;
                    // SAFETY: (token, head) rows are disjoint across tasks: each task owns its
                    // tokens' heads of one kv head; the row lies inside `attn` ([T, H*hd]).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.get().add(t * d + h * hd), hd)
                    };
                    let inv = 1.0 / l[row];
                    for (x, &y) in dst.iter_mut().zip(&o[row * hd..(row + 1) * hd]) {
                        *x = y * inv;
                    }
                }
            }
        }
    });
}

/// One task of [`attend_blocks`]: tokens `t0..t1` of sequence `sq` against kv head `kvh`,
/// leaving the unnormalized outputs in `o` and the weight sums in `l` of the workspace.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn attend_block<R: KvRows>(
    rows: &R,
    lay: &AttnBlock,
    ws: &mut [f32],
    q: &[f32],
    (t0, t1): (usize, usize),
    sq: usize,
    pos: &[usize],
    kvh: usize,
    group: usize,
    d: usize,
    scale: f32,
) {
    let hd = lay.hd;
    let n_rows = (t1 - t0) * group;
    let (qb, rest) = ws.split_at_mut(lay.o);
    let (ob, rest) = rest.split_at_mut(lay.s - lay.o);
    let (sb, rest) = rest.split_at_mut(lay.kt - lay.s);
    let (ktb, rest) = rest.split_at_mut(lay.v - lay.kt);
    let (vb, rest) = rest.split_at_mut(lay.m - lay.v);
    let (mb, rest) = rest.split_at_mut(lay.l - lay.m);
    let (lb, kb) = rest.split_at_mut(lay.k - lay.l);
    // Scaled query rows: row (t - t0)·group + g is head kvh·group + g of token t.
    for t in t0..t1 {
        for g in 0..group {
            let row = (t - t0) * group + g;
            let src = &q[t * d + (kvh * group + g) * hd..][..hd];
            for (x, &y) in qb[row * hd..(row + 1) * hd].iter_mut().zip(src) {
                *x = y * scale;
            }
        }
    }
    ob[..n_rows * hd].fill(0.0);
    mb[..n_rows].fill(f32::NEG_INFINITY);
    lb[..n_rows].fill(0.0);
    let last = pos[t1 - 1];
    // An f32 cache is read in place; the others are decoded key by key.
    let in_place = rows.f32_rows(sq, kvh);
    for j0 in (0..=last).step_by(ATT_KEYS) {
        let kn = ATT_KEYS.min(last + 1 - j0);
        // The chunk's keys, transposed into [hd, ATT_KEYS]. (Columns past `kn` keep whatever
        // they held: their scores are masked to zero weight below.)
        let (keys, lds): (&[f32], usize) = match in_place {
            Some((k, _, stride)) => (&k[j0 * stride..], stride),
            None => {
                for jj in 0..kn {
                    let (k, v) = (&mut kb[jj * hd..][..hd], &mut vb[jj * hd..][..hd]);
                    rows.decode(sq, j0 + jj, kvh, k, v);
                }
                (&kb[..], hd)
            }
        };
        ops::transpose((kn, hd), keys, lds, ktb, ATT_KEYS);
        // Scores of the chunk: [rows, hd] · [hd, ATT_KEYS].
        let dims = (n_rows, ATT_KEYS, hd);
        ops::gemm_f32(dims, qb, hd, ktb, ATT_KEYS, sb, ATT_KEYS, false);
        for t in t0..t1 {
            // Token t sees keys 0..=pos[t]: in this chunk, the first `valid`.
            let valid = (pos[t] + 1).saturating_sub(j0).min(kn);
            for g in 0..group {
                let row = (t - t0) * group + g;
                let sr = &mut sb[row * ATT_KEYS..(row + 1) * ATT_KEYS];
                if valid == 0 {
                    sr.fill(0.0);
                    continue;
                }
                let m_new = mb[row].max(ops::max_f32(&sr[..valid]));
                // Once a row's maximum settles it rarely moves: skip the scalar exp then
                // (exp_nonpositive(±0) is exactly 1; it was most of this loop's time at depth).
                let diff = mb[row] - m_new;
                let corr = if diff == 0.0 {
                    1.0
                } else {
                    ops::exp_nonpositive(diff)
                };
                if corr != 1.0 {
                    lb[row] *= corr;
                    ob[row * hd..(row + 1) * hd]
                        .iter_mut()
                        .for_each(|x| *x *= corr);
                }
                let sum = ops::exp_sub_sum(&mut sr[..valid], m_new);
                sr[valid..].fill(0.0);
                lb[row] += sum;
                mb[row] = m_new;
            }
        }
        // Weighted values: [rows, kn] · [kn, hd], added to the outputs.
        let (v, ldv): (&[f32], usize) = match in_place {
            Some((_, v, stride)) => (&v[j0 * stride..], stride),
            None => (vb, hd),
        };
        ops::gemm_f32((n_rows, hd, kn), sb, ATT_KEYS, v, ldv, ob, hd, true);
    }
}

impl Model {
    fn matmul(
        &self,
        pool: &ThreadPool,
        t: &Tensor,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
        xq: &mut [u8],
    ) {
        matmul(pool, self.matrix(t), x, n_tokens, out, xq);
    }
}

impl<'a> WeightMatrix<'a> {
    /// The bytes of row `i`.
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.data.len() / self.rows.max(1);
        &self.data[i * rb..(i + 1) * rb]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvCacheType;

    /// A scratch with only what attention touches, for `t_len` tokens of `n_head` heads.
    fn scratch(t_len: usize, n_head: usize, group: usize, hd: usize, n_ctx: usize) -> Scratch {
        let threads = 2;
        Scratch {
            max_batch: t_len,
            x: Vec::new(),
            xb: Vec::new(),
            q: vec![0.0; t_len * n_head * hd],
            k: Vec::new(),
            v: Vec::new(),
            qkv: Vec::new(),
            attn: vec![f32::NAN; t_len * n_head * hd],
            proj: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            xq: Vec::new(),
            cos: Vec::new(),
            sin: Vec::new(),
            scores: vec![0.0; threads * n_ctx],
            attn_ws: vec![0.0; threads * AttnBlock::new(group, hd).len],
            blocks: vec![0; t_len + 1],
        }
    }

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The blocked attention of a batch (several tokens) against an f64 softmax(q·k/√hd)·v,
    /// token by token: prefill runs across key chunks and block boundaries, and a batch mixing
    /// two sequences with a break in positions.
    #[test]
    fn blocked_attention_matches_the_definition() {
        let (n_head, n_kv, hd, n_ctx) = (6, 2, 16, 160);
        let group = n_head / n_kv;
        let d = n_head * hd;
        for ty in [KvCacheType::F32, KvCacheType::F16] {
            let mut kv = KvCache::with_type(ty, 1, 2, n_ctx, n_kv, hd);
            let kvd = n_kv * hd;
            let keys = values(2 * n_ctx * kvd, 1);
            let vals = values(2 * n_ctx * kvd, 2);
            for sq in 0..2 {
                for p in 0..n_ctx {
                    let at = (sq * n_ctx + p) * kvd;
                    kv.store_seq(0, sq, p, &keys[at..at + kvd], &vals[at..at + kvd]);
                }
            }
            let prefill: Vec<(usize, usize)> = (10..95).map(|p| (0, p)).collect();
            let mixed = vec![
                (0, 50),
                (1, 30),
                (1, 31),
                (1, 32),
                (0, 80),
                (0, 82),
                (1, 150),
            ];
            for toks in [prefill, mixed] {
                let t_len = toks.len();
                let seq: Vec<usize> = toks.iter().map(|t| t.0).collect();
                let pos: Vec<usize> = toks.iter().map(|t| t.1).collect();
                let tokens = vec![0u32; t_len];
                let batch = Batch {
                    tokens: &tokens,
                    seq: &seq,
                    pos: &pos,
                    logits_from: t_len,
                };
                assert!(t_len > 1, "a single token takes the per-head path");
                let mut s = scratch(t_len, n_head, group, hd, n_ctx);
                s.q = values(t_len * d, 3);
                let pool = ThreadPool::new(2);
                attention(&pool, &kv, 0, &mut s, &batch, n_head, hd);
                // Against the cache's own rows (after its rounding), decoded.
                for t in 0..t_len {
                    for h in 0..n_head {
                        let qh = &s.q[t * d + h * hd..][..hd];
                        let mut sc = Vec::new();
                        let mut vs = Vec::new();
                        for j in 0..=pos[t] {
                            let (mut k, mut v) = (vec![0.0; hd], vec![0.0; hd]);
                            match kv.layer_view(0) {
                                LayerView::F32(r) => r.decode(seq[t], j, h / group, &mut k, &mut v),
                                LayerView::F16(r) => r.decode(seq[t], j, h / group, &mut k, &mut v),
                                LayerView::Q8(r) => r.decode(seq[t], j, h / group, &mut k, &mut v),
                            }
                            let dot: f64 =
                                qh.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum();
                            sc.push(dot / (hd as f64).sqrt());
                            vs.push(v);
                        }
                        let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let w: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                        let sum: f64 = w.iter().sum();
                        for i in 0..hd {
                            let want: f64 =
                                w.iter().zip(&vs).map(|(p, v)| p * v[i] as f64).sum::<f64>() / sum;
                            let got = s.attn[t * d + h * hd + i] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{ty:?} t={t} (seq {}, pos {}) head {h} [{i}]: {got} vs {want}",
                                seq[t],
                                pos[t]
                            );
                        }
                    }
                }
            }
        }
    }
}
