//! Micro-benchmark of decode's matrix-vector products from DRAM: `matmul` of one activation row
//! against a weight matrix far larger than the caches, on the worker pool, relative to a plain
//! sequential read of the same bytes by the same threads (`bench::measure_read_bandwidth`,
//! the bound `qwen bench` divides by).
//!
//! ```text
//! cargo run --release --example bench_matvec [-- [--threads N] [--types q5_0,q8_0,...] [--cols N]]
//! ```
//!
//! `--cols N` gives every matrix rows of N columns (and as many rows as keep its size): the
//! traversal's efficiency depends on the row length.
//!
//! Per type: the best matvec and read rates in GB/s of weight bytes, and the median of 9
//! alternating (matvec, read) pairs' ratios: the share of the read rate the kernels and their
//! traversal reach. The matrices are the shapes of Qwen2.5 0.5B's decode (896 or 4864 columns)
//! at 145-185 MB each, bigger than a desktop L3. Wall time: run it on a quiet machine, or A/B
//! builds alternately.

use std::time::Instant;

use qwen::backend::cpu::{default_threads, matmul, ThreadPool, WeightMatrix};
use qwen::bench::measure_read_bandwidth;
use qwen::gguf::GgmlType;
use qwen::quant::quantize_row;

/// (type, columns, rows) of each matrix.
const CASES: [(GgmlType, usize, usize); 5] = [
    (GgmlType::Q8_0, 896, 151_936), // the 0.5B LM head
    (GgmlType::Q5_0, 896, 300_000),
    (GgmlType::Q4_K, 4864, 60_000),
    (GgmlType::Q6_K, 4864, 40_000),
    (GgmlType::Q5_K, 4864, 48_000),
];

fn main() {
    let mut threads = default_threads();
    let mut types: Option<Vec<String>> = None;
    let mut cols_override: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--threads" => threads = value.parse().expect("--threads N"),
            "--cols" => cols_override = Some(value.parse().expect("--cols N")),
            "--types" => types = Some(value.split(',').map(str::to_lowercase).collect()),
            other => panic!("unknown option {other}"),
        }
    }
    let pool = ThreadPool::new(threads);
    println!("matmul of 1 activation row from DRAM, {threads} threads, against a plain read");
    println!("type    MB  matvec GB/s  read GB/s  ratio (median)");
    for (ty, cols, rows) in CASES {
        let name = ty.to_string().to_lowercase();
        let (cols, rows) = match cols_override {
            Some(c) => (c, rows * cols / c),
            None => (cols, rows),
        };
        if types.as_ref().is_some_and(|t| !t.contains(&name)) {
            continue;
        }
        // One quantized row repeated: the values do not matter to the speed, the bytes read do.
        let x: Vec<f32> = (0..cols)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let Some(row_bytes) = ty.row_bytes(cols) else {
            println!("{name:<5} skipped: {cols} columns are not whole blocks");
            continue;
        };
        let mut row = vec![0u8; row_bytes];
        quantize_row(ty, &x, &mut row).expect("quantizable type");
        let data = row.repeat(rows);
        let w = WeightMatrix {
            ty,
            rows,
            cols,
            data: &data,
        };
        let (mut out, mut xq) = (vec![0f32; rows], vec![0u8; cols * 4]);
        let (mut best, mut best_read, mut ratios) = (0f64, 0f64, Vec::new());
        for _ in 0..9 {
            let t = Instant::now();
            matmul(&pool, w, &x, 1, &mut out, &mut xq);
            let mv = data.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
            let read = measure_read_bandwidth(&data, threads) / 1e9;
            (best, best_read) = (best.max(mv), best_read.max(read));
            ratios.push(mv / read);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "{name:<5} {:>5} {best:>12.2} {best_read:>10.2} {:>6.2}",
            data.len() / 1_000_000,
            ratios[ratios.len() / 2]
        );
    }
}
