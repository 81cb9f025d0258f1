//! Parity of the matrix products (`gemm`) with the single-row dots: in every build this CPU
//! runs and for every weight type, each (weight row, activation row) result must have exactly
//! the bits `vec_dot` gives, be produced exactly once, and no other output may appear. The
//! shapes cover one block and many, row counts around the 8-row groups, activation row counts
//! around the 4-row register tile and across the 256-row accumulator chunk, and rows long enough
//! to span several panel chunks; the data mixes realistic quantized rows with raw random bytes
//! and activations holding the extremes (−128, −127, 127).

use super::dispatch::{self, Kernels};
use super::simd_tests::{
    activations_from_quants, raw_weights, real_activations, real_weights, sparse_quants, Rng,
    WEIGHT_TYPES,
};
use super::{fill_gemm_aux, gemm_act_row_bytes, gemm_with, quantize_gemm_act, vec_dot_type};
use crate::gguf::{GgmlType, QK_K};

/// Activation rows (each in `vec_dot_type(ty)`) in the format `gemm` takes: row, side data.
fn gemm_acts(ty: GgmlType, n: usize, rows: &[Vec<u8>]) -> Vec<u8> {
    let at = vec_dot_type(ty);
    let arb = gemm_act_row_bytes(ty, n).unwrap();
    let mut out = vec![0u8; rows.len() * arb];
    for (q, dst) in rows.iter().zip(out.chunks_exact_mut(arb)) {
        let (dq, aux) = dst.split_at_mut(q.len());
        dq.copy_from_slice(q);
        fill_gemm_aux(at, q, aux);
    }
    out
}

/// `gemm` on build `k`, as a dense `[n_tok][rows]` matrix; fails on any output outside the
/// matrix or written twice.
fn run(k: &Kernels, ty: GgmlType, n: usize, w: &[u8], acts: &[u8], n_tok: usize) -> Vec<f32> {
    let rb = ty.row_bytes(n).unwrap();
    let rows = w.len() / rb;
    let arb = gemm_act_row_bytes(ty, n).unwrap();
    let qrb = vec_dot_type(ty).row_bytes(n).unwrap();
    let mut out = vec![f32::NAN; n_tok * rows];
    let mut seen = vec![false; n_tok * rows];
    gemm_with(
        k,
        ty,
        rb,
        w,
        qrb,
        acts,
        arb,
        n_tok,
        &mut |t0, r, width, vals| {
            assert!(
                width > 0 && vals.len() % width == 0,
                "{ty}: {} values of width {width}",
                vals.len()
            );
            for (j, row) in vals.chunks_exact(width).enumerate() {
                let t = t0 + j;
                assert!(
                    t < n_tok && r + width <= rows,
                    "{ty}: output ({t}, {r}) outside"
                );
                for (i, &v) in row.iter().enumerate() {
                    let at = t * rows + r + i;
                    assert!(!seen[at], "{ty}: ({t}, {}) written twice", r + i);
                    seen[at] = true;
                    out[at] = v;
                }
            }
        },
    );
    assert!(
        seen.iter().all(|&s| s),
        "{ty}: some results were never written"
    );
    out
}

/// (row length, weight rows, activation rows) to test for a type.
fn shapes(ty: GgmlType) -> Vec<(usize, usize, usize)> {
    let b = ty.block_size();
    // Float rows: 1024 columns take the float kernels' vector reduction (no tail); 13 a tail.
    let long = if b == 1 { 1024 } else { 4864 };
    let mid = match b {
        1 => 13,
        QK_K => 1536,
        _ => 896,
    };
    vec![
        (b, 1, 1),
        (b, 8, 4),
        (3 * b, 13, 5),
        (mid, 20, 9),
        (mid, 16, 16),
        (long, 11, 7),
        (b, 9, 260),
        // Around the 16-row groups of the AVX-512 panels, with an odd block count (65 blocks of
        // the 32-element formats: a panel chunk of 64, then one).
        (if b == 32 { 65 * b } else { mid }, 37, 6),
        (3 * b, 16, 4),
        // The float kernels split the activation rows into blocks that stay in L2 (129 or 132
        // rows of 1024 columns): 200 rows span two.
        (long, 5, if b == 1 { 200 } else { 8 }),
    ]
}

/// Weight rows (every third one raw random bytes, the others realistic) and activation rows
/// (realistic, raw random quants with the extremes, sparse) for a product of `rows × n_tok`.
fn operands(
    ty: GgmlType,
    n: usize,
    rows: usize,
    n_tok: usize,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let w: Vec<u8> = (0..rows)
        .flat_map(|r| match r % 3 {
            2 if ty.block_size() > 1 => raw_weights(ty, n, rng, false),
            _ => real_weights(ty, n, rng),
        })
        .collect();
    let acts: Vec<Vec<u8>> = (0..n_tok)
        .map(|t| match t % 4 {
            3 if ty.block_size() > 1 => {
                let q = sparse_quants(n, rng);
                activations_from_quants(ty, &q, rng, false)
            }
            2 if ty.block_size() > 1 => {
                let q: Vec<i8> = (0..n).map(|_| rng.byte() as i8).collect();
                activations_from_quants(ty, &q, rng, false)
            }
            _ => real_activations(ty, n, rng),
        })
        .collect();
    (w, acts)
}

/// Runs `gemm` on build `k` for one shape and compares every result with `vec_dot`, bit for bit.
fn check(k: &Kernels, ty: GgmlType, shape: (usize, usize, usize), rng: &mut Rng) {
    check_placed(k, ty, shape, rng, None);
}

/// [`check`], with the activation rows starting `Some(skew)` bytes past a cache line (as the
/// model's scratch hands them over: 0), or wherever the allocator put them (`None`).
fn check_placed(
    k: &Kernels,
    ty: GgmlType,
    (n, rows, n_tok): (usize, usize, usize),
    rng: &mut Rng,
    skew: Option<usize>,
) {
    let (w, acts) = operands(ty, n, rows, n_tok, rng);
    let packed = gemm_acts(ty, n, &acts);
    let mut buf = vec![0u8; packed.len() + 128];
    let start = match skew {
        Some(skew) => buf.as_ptr().align_offset(64) + skew,
        None => 0,
    };
    buf[start..start + packed.len()].copy_from_slice(&packed);
    let got = run(k, ty, n, &w, &buf[start..start + packed.len()], n_tok);
    let rb = ty.row_bytes(n).unwrap();
    for (t, a) in acts.iter().enumerate() {
        for r in 0..rows {
            let want = k.vec_dot(ty, &w[r * rb..(r + 1) * rb], a);
            let g = got[t * rows + r];
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{} {ty} n={n} rows={rows} n_tok={n_tok}: ({t}, {r}) gemm {g} vec_dot {want}",
                k.name
            );
        }
    }
}

#[test]
fn gemm_matches_vec_dot_bit_for_bit() {
    let mut rng = Rng::new(0x6E33_0001);
    for k in dispatch::all() {
        for ty in WEIGHT_TYPES {
            for shape in shapes(ty) {
                check(k, ty, shape, &mut rng);
            }
        }
    }
}

/// The AMX tiles of the `avx512-amx` build (Q4_K, Q6_K, Q5_0; where the CPU and OS have AMX): whole
/// tiles of 16 activation rows with the register tiles taking the rest, one and several panel
/// chunks, two chunks of activation rows (256 + 32), on activation rows that start on a cache
/// line (as the model's scratch hands them over) and one byte past it (tile rows then straddle
/// lines: slower, the same bits).
#[test]
fn amx_tiles_match_vec_dot() {
    let Some(k) = dispatch::all().into_iter().find(|k| k.name == "avx512-amx") else {
        eprintln!("SKIPPED amx_tiles_match_vec_dot: this CPU or OS runs no AMX tiles");
        return;
    };
    let mut rng = Rng::new(0x6E33_0005);
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0] {
        let b = ty.block_size();
        // Q4_K panels hold 6 blocks, Q6_K panels 5, Q5_0 panels 64.
        let lengths = if b == QK_K {
            [b, 7 * b, 13 * b]
        } else {
            [3 * b, 61 * b, 130 * b]
        };
        for n in lengths {
            // 1, 2, 3 and 16 + 2 token tiles: the Q4_K tiles run pairs and a lone one.
            for (rows, n_tok) in [(16, 16), (17, 33), (35, 48), (16, 288)] {
                for skew in [0, 1] {
                    check_placed(k, ty, (n, rows, n_tok), &mut rng, Some(skew));
                }
            }
        }
    }
}

/// The types of the Qwen2.5 Q4_K_M files (the ones with matrix kernels on every SIMD build), and
/// Q5_K, Q3_K and Q2_K (matrix kernels on AVX2), at the edges of the tilings: every activation
/// row count from 1 to 9 (whole register tiles of 4 and every leftover), odd and even weight row
/// counts (the NEON 2-row tiles and their edge), odd and even block counts (the NEON Q8_0/Q5_0
/// kernels alternate two accumulators by block), and row/activation counts just past the
/// result blocks (64 weight rows, 32 activation rows on NEON; 8-row groups and 256-row chunks
/// on AVX2), and one activation row against more rows than a row kernel call takes.
#[test]
fn gemm_edges_of_the_tiles() {
    let mut rng = Rng::new(0x6E33_0003);
    for k in dispatch::all() {
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q3_K,
            GgmlType::Q2_K,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
        ] {
            let b = ty.block_size();
            for n_tok in 1..=9 {
                for (blocks, rows) in [(1, 1), (2, 2), (3, 3), (1, 5), (2, 8), (3, 9)] {
                    check(k, ty, (blocks * b, rows, n_tok), &mut rng);
                }
            }
            // One activation row against more weight rows than one `vec_dot_rows` call takes.
            let past_a_call = (b, super::ROWS_PER_CALL_ONE_TOKEN + 37, 1);
            for shape in [(b, 65, 33), (2 * b, 131, 3), (b, 3, 66), past_a_call] {
                check(k, ty, shape, &mut rng);
            }
        }
    }
}

/// Where the environment names the builds that must be tested here (`QWEN_EXPECT_KERNELS`, a
/// comma-separated list: `scripts/test-aarch64.sh` sets `neon,neon+dotprod` and runs qemu with
/// `-cpu max`), every one of them is among those the parity tests iterate over, so a missing
/// CPU feature cannot silently skip a build.
#[test]
fn expected_builds_are_tested() {
    let Ok(want) = std::env::var("QWEN_EXPECT_KERNELS") else {
        eprintln!("QWEN_EXPECT_KERNELS not set: testing the builds this CPU runs");
        return;
    };
    let have: Vec<&str> = dispatch::all().iter().map(|k| k.name).collect();
    for name in want.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        assert!(
            have.contains(&name),
            "QWEN_EXPECT_KERNELS names {name}, but this CPU runs only {have:?}"
        );
    }
}

/// The public entry points agree: `quantize_gemm_act` writes the row `quantize_row` writes
/// followed by its side data, and `gemm` (selected build) equals `vec_dot` on its rows.
#[test]
fn public_gemm_matches_vec_dot() {
    let mut rng = Rng::new(0x6E33_0002);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
    ] {
        let n = 1536;
        let (rows, n_tok) = (24, 6);
        let w: Vec<u8> = (0..rows)
            .flat_map(|_| real_weights(ty, n, &mut rng))
            .collect();
        let arb = gemm_act_row_bytes(ty, n).unwrap();
        let qrb = vec_dot_type(ty).row_bytes(n).unwrap();
        let mut act = vec![0u8; n_tok * arb];
        let xs: Vec<Vec<f32>> = (0..n_tok).map(|_| rng.values(n)).collect();
        for (x, dst) in xs.iter().zip(act.chunks_exact_mut(arb)) {
            quantize_gemm_act(ty, x, dst).unwrap();
            let mut q = vec![0u8; qrb];
            super::quantize_row(vec_dot_type(ty), x, &mut q).unwrap();
            assert_eq!(&dst[..qrb], &q[..]);
        }
        assert!(quantize_gemm_act(ty, &xs[0], &mut act[..arb - 1]).is_err());
        let mut out = vec![f32::NAN; rows * n_tok];
        super::gemm(ty, n, &w, &act, n_tok, &mut |t0, r, width, v| {
            for (j, row) in v.chunks_exact(width).enumerate() {
                let t = t0 + j;
                out[t * rows + r..t * rows + r + width].copy_from_slice(row)
            }
        });
        let rb = ty.row_bytes(n).unwrap();
        for t in 0..n_tok {
            for r in 0..rows {
                let want = super::vec_dot(ty, n, &w[r * rb..], &act[t * arb..t * arb + qrb]);
                assert_eq!(
                    out[t * rows + r].to_bits(),
                    want.to_bits(),
                    "{ty} ({t}, {r})"
                );
            }
        }
    }
}

/// Every activation row count from 1 to 12 (below, at and above each build's threshold for its
/// matrix kernels, and around the register tiles), against weight row counts that leave every
/// tail of an 8-row group (1, 6, 7: 9 and 15 rows), odd block counts, and rows longer than one panel chunk.
/// Every weight type with more than one element per block, in every build.
#[test]
fn gemm_matches_vec_dot_for_every_activation_row_count() {
    let mut rng = Rng::new(0x6E33_0003);
    for k in dispatch::all() {
        for ty in WEIGHT_TYPES.into_iter().filter(|t| t.block_size() > 1) {
            let b = ty.block_size();
            // Q8_0-sized blocks: 3 and 61 blocks (odd; 61 spans two panel chunks of Q8_0).
            let lengths = if b == QK_K {
                [b, 5 * b]
            } else {
                [3 * b, 61 * b]
            };
            for (n, rows) in lengths
                .into_iter()
                .flat_map(|n| [1, 6, 9, 15].map(|rows| (n, rows)))
            {
                let w: Vec<u8> = (0..rows)
                    .flat_map(|r| match r % 4 {
                        3 => raw_weights(ty, n, &mut rng, false),
                        _ => real_weights(ty, n, &mut rng),
                    })
                    .collect();
                for n_tok in 1..=12 {
                    let acts: Vec<Vec<u8>> = (0..n_tok)
                        .map(|t| match t % 3 {
                            2 => {
                                let q: Vec<i8> = (0..n).map(|_| rng.byte() as i8).collect();
                                activations_from_quants(ty, &q, &mut rng, false)
                            }
                            _ => real_activations(ty, n, &mut rng),
                        })
                        .collect();
                    let got = run(k, ty, n, &w, &gemm_acts(ty, n, &acts), n_tok);
                    let rb = ty.row_bytes(n).unwrap();
                    for (t, a) in acts.iter().enumerate() {
                        for r in 0..rows {
                            let want = k.vec_dot(ty, &w[r * rb..(r + 1) * rb], a);
                            let g = got[t * rows + r];
                            assert_eq!(
                                g.to_bits(),
                                want.to_bits(),
                                "{} {ty} n={n} rows={rows} n_tok={n_tok}: ({t}, {r}) gemm {g} \
                                 vec_dot {want}",
                                k.name
                            );
                        }
                    }
                }
            }
        }
    }
}
