//! The key/value cache, preallocated for the whole context at session creation.

/// Keys and values per layer, laid out `[layer][position][kv_head * head_dim]` in f32.
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    n_ctx: usize,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Self {
        let n = n_layer * n_ctx * kv_dim;
        KvCache {
            k: vec![0.0; n],
            v: vec![0.0; n],
            n_ctx,
            kv_dim,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Bytes of cache per token (all layers, keys and values).
    pub fn bytes_per_token(&self) -> usize {
        let n_layer = self.k.len() / (self.n_ctx * self.kv_dim).max(1);
        2 * n_layer * self.kv_dim * std::mem::size_of::<f32>()
    }

    fn range(&self, layer: usize, pos: usize, len: usize) -> std::ops::Range<usize> {
        let start = (layer * self.n_ctx + pos) * self.kv_dim;
        start..start + len * self.kv_dim
    }

    /// Stores `len` positions of keys and values starting at `pos`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let len = k.len() / self.kv_dim;
        let r = self.range(layer, pos, len);
        self.k[r.clone()].copy_from_slice(k);
        self.v[r].copy_from_slice(v);
    }

    /// Keys and values of positions `0..len` of a layer.
    pub fn layer(&self, layer: usize, len: usize) -> (&[f32], &[f32]) {
        let r = self.range(layer, 0, len);
        (&self.k[r.clone()], &self.v[r])
    }
}
