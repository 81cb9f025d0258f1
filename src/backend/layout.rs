//! Host-side arithmetic of the GPU backends that needs no device, kept apart (and built without
//! the GPU features) so it is unit-tested everywhere: the kernel sources as the runtime compilers
//! get them, launch geometry, which kernel decodes which block format, and the device KV cache's
//! layout. The constants mirror `#define`s in `kernels/`; a test reads them from there.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::kv_cache::{self, KvCacheType};

/// Threads per block of the reducing kernels (`QWEN_BLOCK`).
pub const BLOCK: u32 = 128;
/// Matrix rows per block of `matmul_*` (`MM_ROWS`): one group of 32 threads per row.
pub const MM_ROWS: u32 = 4;
/// Tokens per block of `matmul_*` (`MM_TOKENS`).
pub const MM_TOKENS: u32 = 4;
/// Largest head size `attention_*` holds in shared memory (`ATT_MAX_HD`).
pub const ATT_MAX_HD: usize = 256;
/// Threads per block of the element-wise (grid-stride) kernels.
pub const ELEMWISE_THREADS: u32 = 256;
/// Most blocks an element-wise launch uses; the kernels loop over the rest.
pub const ELEMWISE_MAX_BLOCKS: u32 = 4096;
/// The grid's y and z extent limit on both vendors.
pub const MAX_GRID_YZ: u32 = 65535;

/// The shared header and the kernel files, as `include_str!` sees them.
pub const HEADER: &str = include_str!("../../kernels/common.cuh");
pub const KERNEL_FILES: [(&str, &str); 3] = [
    ("matmul.cu", include_str!("../../kernels/matmul.cu")),
    ("ops.cu", include_str!("../../kernels/ops.cu")),
    ("attention.cu", include_str!("../../kernels/attention.cu")),
];

/// A kernel file with `#include "common.cuh"` replaced by the header: one self-contained
/// program, so neither compiler needs an include path.
pub fn kernel_source(file_text: &str) -> String {
    let mut out = String::with_capacity(file_text.len() + HEADER.len());
    for line in file_text.lines() {
        if line.trim() == "#include \"common.cuh\"" {
            out.push_str(HEADER);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Every kernel the backend launches, by file: the compile test checks each is in the output.
pub fn kernel_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "qkv_finish",
        "swiglu",
        "kv_store_q8",
        "key_bias_sub",
        "attention_f16",
        "attention_q8",
        "argmax_rows",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for ty in GgmlType::ALL {
        if let Some(s) = weight_kernel_suffix(ty) {
            names.push(format!("matmul_{s}"));
            names.push(format!("get_rows_{s}"));
        }
    }
    names
}

/// The suffix of the `matmul_*` / `get_rows_*` kernels that decode `ty`, or `None` for the
/// activation-only formats (Q8_1, Q8_K), which never hold weights.
pub fn weight_kernel_suffix(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    match ty {
        Q8_1 | Q8_K => None,
        _ => Some(ty.name()),
    }
}

/// Checks that a matrix of `cols` columns of `ty` can go to the device kernels, which decode
/// rows in sub-blocks of 32 elements, and returns its row size in bytes.
pub fn device_row_bytes(name: &str, ty: GgmlType, cols: usize) -> Result<usize> {
    if weight_kernel_suffix(ty).is_none() {
        return Err(Error::tensor(name, format!("{ty} is not a weight format")));
    }
    if !cols.is_multiple_of(32) || cols > i32::MAX as usize {
        return Err(Error::tensor(
            name,
            format!("{cols} columns: the GPU kernels need a multiple of 32"),
        ));
    }
    ty.row_bytes(cols)
        .ok_or_else(|| Error::tensor(name, format!("{cols} columns are not whole {ty} blocks")))
}

/// Byte offset, within a row, of 32-element sub-block `s` (where `deq32_*` reads it): block
/// `s * 32 / block_size` plus, inside a K-quant super-block, the sub-block's own data.
pub fn sub_block_offset(ty: GgmlType, s: usize) -> usize {
    (s * 32 / ty.block_size()) * ty.type_size()
}

/// A launch's grid and block extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

fn div_ceil(a: usize, b: u32) -> usize {
    a.div_ceil(b as usize)
}

/// `matmul_*`: rows in groups of [`MM_ROWS`], tokens in groups of [`MM_TOKENS`].
pub fn matmul_launch(rows: usize, n_tok: usize) -> Result<Launch> {
    let gx = div_ceil(rows, MM_ROWS);
    let gy = div_ceil(n_tok, MM_TOKENS);
    if gx == 0 || gy == 0 || gx > i32::MAX as usize || gy > MAX_GRID_YZ as usize {
        return Err(Error::InvalidArgument(format!(
            "matmul of {rows} rows for {n_tok} tokens does not fit a launch grid"
        )));
    }
    Ok(Launch {
        grid: (gx as u32, gy as u32, 1),
        block: (BLOCK, 1, 1),
    })
}

/// Kernels with one block per token row (`rms_norm`, `get_rows_*`).
pub fn rows_launch(n_tok: usize) -> Launch {
    Launch {
        grid: (n_tok.max(1) as u32, 1, 1),
        block: (BLOCK, 1, 1),
    }
}

/// Grid-stride element-wise kernels over `n` items.
pub fn elementwise_launch(n: usize) -> Launch {
    let blocks = div_ceil(n.max(1), ELEMWISE_THREADS).min(ELEMWISE_MAX_BLOCKS as usize);
    Launch {
        grid: (blocks as u32, 1, 1),
        block: (ELEMWISE_THREADS, 1, 1),
    }
}

/// `attention_*`: one block per (token, head).
pub fn attention_launch(n_tok: usize, n_head: usize) -> Result<Launch> {
    if n_head == 0 || n_head > MAX_GRID_YZ as usize {
        return Err(Error::InvalidArgument(format!("{n_head} attention heads")));
    }
    Ok(Launch {
        grid: (n_tok.max(1) as u32, n_head as u32, 1),
        block: (BLOCK, 1, 1),
    })
}

/// The device KV cache: per layer, keys and values `[n_seq][n_ctx][kv_dim]` as f16 or int8,
/// plus for int8 one f32 scale per block of `q8_block` values (the CPU cache's blocks: 32, or
/// the whole head row when the head size is not a multiple of 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub ty: KvCacheType,
    pub n_seq: usize,
    pub n_ctx: usize,
    pub kv_dim: usize,
    pub head_dim: usize,
    /// Values per int8 scale ([`kv_cache::q8_block`] of the head size).
    pub q8_block: usize,
}

impl KvLayout {
    pub fn new(
        ty: KvCacheType,
        n_seq: usize,
        n_ctx: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<KvLayout> {
        if ty == KvCacheType::F32 {
            return Err(Error::Unsupported(
                "an f32 KV cache on a GPU (use f16 or q8)".into(),
            ));
        }
        if head_dim > ATT_MAX_HD || !head_dim.is_multiple_of(2) {
            return Err(Error::Unsupported(format!(
                "head size {head_dim} on a GPU (even, at most {ATT_MAX_HD})"
            )));
        }
        Ok(KvLayout {
            ty,
            n_seq,
            n_ctx,
            kv_dim: n_head_kv * head_dim,
            head_dim,
            q8_block: kv_cache::q8_block(head_dim),
        })
    }

    /// Elements between one sequence's rows and the next's (the kernels' `seq_stride`).
    pub fn seq_stride(&self) -> usize {
        self.n_ctx * self.kv_dim
    }

    /// Elements of keys (or values) per layer.
    pub fn layer_elems(&self) -> usize {
        self.n_seq * self.seq_stride()
    }

    /// Element index of (seq, pos, channel).
    pub fn index(&self, seq: usize, pos: usize, c: usize) -> usize {
        seq * self.seq_stride() + pos * self.kv_dim + c
    }

    /// Bytes of the keys (or values) of one layer.
    pub fn layer_bytes(&self) -> usize {
        match self.ty {
            KvCacheType::F16 => 2 * self.layer_elems(),
            _ => self.layer_elems(),
        }
    }

    /// Bytes of the keys' (or values') scales of one layer (int8 only).
    pub fn layer_scale_bytes(&self) -> usize {
        match self.ty {
            KvCacheType::Q8 => 4 * (self.layer_elems() / self.q8_block),
            _ => 0,
        }
    }

    /// Bytes of the int8 cache's rotation table (each position's RoPE cos | sin, shared by the
    /// layers), from which attention restores the key bias the cache is stored without.
    pub fn rotation_bytes(&self) -> usize {
        match self.ty {
            KvCacheType::Q8 => 4 * self.n_seq * self.n_ctx * self.head_dim,
            _ => 0,
        }
    }

    /// Device bytes of the whole cache for `n_layer` layers.
    pub fn total_bytes(&self, n_layer: usize) -> usize {
        2 * n_layer * (self.layer_bytes() + self.layer_scale_bytes()) + self.rotation_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `#define NAME value` in `text`, parsed.
    fn define(text: &str, name: &str) -> Option<String> {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("#define") && it.next() == Some(name))
                .then(|| it.collect::<Vec<_>>().join(" "))
        })
    }

    #[test]
    fn constants_match_the_kernel_sources() {
        let all: String = std::iter::once(HEADER)
            .chain(KERNEL_FILES.iter().map(|f| f.1))
            .collect();
        assert_eq!(define(&all, "QWEN_BLOCK").unwrap(), BLOCK.to_string());
        assert_eq!(define(&all, "MM_ROWS").unwrap(), "(QWEN_BLOCK / 32)");
        assert_eq!(BLOCK / 32, MM_ROWS);
        assert_eq!(define(&all, "MM_TOKENS").unwrap(), MM_TOKENS.to_string());
        assert_eq!(define(&all, "ATT_MAX_HD").unwrap(), ATT_MAX_HD.to_string());
        // The GGUF type ids the kernels switch on.
        for ty in GgmlType::ALL {
            if let Some(s) = weight_kernel_suffix(ty) {
                let id = define(HEADER, &format!("QT_{}", s.to_uppercase()));
                assert_eq!(id, Some((ty as u32).to_string()), "{ty}");
            }
        }
    }

    #[test]
    fn every_launched_kernel_is_defined_in_the_sources() {
        let all: String = KERNEL_FILES.iter().map(|f| f.1).collect();
        for name in kernel_names() {
            let direct = all.contains(&format!("QKERNEL void {name}("));
            let by_macro = name
                .strip_prefix("matmul_")
                .or_else(|| name.strip_prefix("get_rows_"))
                .is_some_and(|s| all.contains(&format!("QWEN_WEIGHT_KERNELS({s}, ")));
            assert!(
                direct || by_macro,
                "kernel {name} is not defined in kernels/"
            );
        }
    }

    #[test]
    fn the_header_is_inlined_once_per_file() {
        for (file, text) in KERNEL_FILES {
            let src = kernel_source(text);
            assert!(
                !src.lines().any(|l| l.trim() == "#include \"common.cuh\""),
                "{file}"
            );
            assert_eq!(src.matches("#define QWEN_BLOCK").count(), 1, "{file}");
            assert!(src.len() > text.len(), "{file}");
        }
    }

    #[test]
    fn weight_formats_and_row_sizes() {
        assert_eq!(weight_kernel_suffix(GgmlType::Q4_K), Some("q4_k"));
        assert_eq!(weight_kernel_suffix(GgmlType::Q8_K), None);
        assert_eq!(weight_kernel_suffix(GgmlType::Q8_1), None);
        assert_eq!(device_row_bytes("w", GgmlType::Q4_0, 896).unwrap(), 28 * 18);
        assert_eq!(
            device_row_bytes("w", GgmlType::Q6_K, 4864).unwrap(),
            19 * 210
        );
        assert_eq!(device_row_bytes("w", GgmlType::F32, 64).unwrap(), 256);
        // Not whole 32-element sub-blocks, or not whole K-quant super-blocks.
        assert!(device_row_bytes("w", GgmlType::F16, 100).is_err());
        assert!(device_row_bytes("w", GgmlType::Q4_K, 96).is_err());
        assert!(device_row_bytes("w", GgmlType::Q8_K, 256).is_err());
    }

    #[test]
    fn sub_block_offsets() {
        // Simple formats: one block per sub-block.
        assert_eq!(sub_block_offset(GgmlType::Q8_0, 3), 3 * 34);
        assert_eq!(sub_block_offset(GgmlType::F16, 2), 2 * 64);
        assert_eq!(sub_block_offset(GgmlType::F32, 1), 128);
        // K-quants: eight sub-blocks share a super-block.
        assert_eq!(sub_block_offset(GgmlType::Q4_K, 7), 0);
        assert_eq!(sub_block_offset(GgmlType::Q4_K, 8), 144);
        assert_eq!(sub_block_offset(GgmlType::Q6_K, 17), 2 * 210);
        // The offsets the kernels compute (`row + size * (s >> 3)` / `row + size * s`).
        for ty in GgmlType::ALL
            .into_iter()
            .filter(|t| weight_kernel_suffix(*t).is_some())
        {
            let per_sub = if ty.block_size() == 256 {
                0
            } else {
                ty.type_size() * 32 / ty.block_size()
            };
            for s in [0usize, 1, 7, 8, 9, 31] {
                let want = if ty.block_size() == 256 {
                    ty.type_size() * (s >> 3)
                } else {
                    per_sub * s
                };
                assert_eq!(sub_block_offset(ty, s), want, "{ty} sub-block {s}");
            }
        }
    }

    #[test]
    fn launch_geometry() {
        let l = matmul_launch(151_936, 1).unwrap();
        assert_eq!(l.grid, (37_984, 1, 1));
        assert_eq!(l.block, (128, 1, 1));
        assert_eq!(matmul_launch(897, 9).unwrap().grid, (225, 3, 1));
        assert!(matmul_launch(10, 4 * 65_536).is_err());
        assert!(matmul_launch(0, 1).is_err());
        assert_eq!(elementwise_launch(1).grid, (1, 1, 1));
        assert_eq!(elementwise_launch(257).grid, (2, 1, 1));
        assert_eq!(
            elementwise_launch(1 << 30).grid,
            (ELEMWISE_MAX_BLOCKS, 1, 1)
        );
        assert_eq!(rows_launch(7).grid, (7, 1, 1));
        assert_eq!(attention_launch(5, 14).unwrap().grid, (5, 14, 1));
        assert!(attention_launch(5, 0).is_err());
    }

    #[test]
    fn kv_layout() {
        let l = KvLayout::new(KvCacheType::F16, 2, 100, 2, 64).unwrap();
        assert_eq!(l.seq_stride(), 100 * 128);
        assert_eq!(l.index(1, 3, 5), 100 * 128 + 3 * 128 + 5);
        assert_eq!(l.layer_bytes(), 2 * 2 * 100 * 128);
        assert_eq!(l.layer_scale_bytes(), 0);
        let q = KvLayout::new(KvCacheType::Q8, 2, 100, 2, 64).unwrap();
        assert_eq!(q.layer_bytes(), 2 * 100 * 128);
        assert_eq!(q.layer_scale_bytes(), 4 * 2 * 100 * 128 / 32);
        assert_eq!(
            q.total_bytes(24),
            2 * 24 * (q.layer_bytes() + q.layer_scale_bytes()) + 4 * 2 * 100 * 64
        );
        // A head row starts on a scale boundary, so `index / 32` is its block's scale.
        assert_eq!(q.index(1, 7, 64) % 32, 0);
        assert!(KvLayout::new(KvCacheType::F32, 1, 1, 1, 64).is_err());
        // A head size that is not a multiple of 32: one scale per head row, as on the CPU.
        let q48 = KvLayout::new(KvCacheType::Q8, 1, 10, 2, 48).unwrap();
        assert_eq!(q48.q8_block, 48);
        assert_eq!(q48.layer_scale_bytes(), 4 * 10 * 2);
        assert!(KvLayout::new(KvCacheType::F16, 1, 1, 1, 512).is_err());
    }
}
