//! Checks `qwen::quant` against ggml itself, as vendored by `llama-cpp-sys-2`:
//!
//! * quantize: our `quantize_row` bytes against ggml's `from_float_ref` (`quantize_row_*_ref`) and
//!   `ggml_quantize_chunk` (what llama-quantize calls; no imatrix), byte for byte;
//! * dequantize: our `dequantize_row` against ggml's `to_float`, bit for bit;
//! * vec_dot: ours against ggml's CPU `vec_dot` on the same weight and activation bytes (exact
//!   where ggml's build runs the scalar reference, close otherwise);
//! * golden hashes: prints the FNV-1a hash of ggml's bytes for the data the main crate's
//!   `quantizer_goldens_match_ggml` test uses, so CI pins bit-exactness without building ggml.
//!
//! Run: `cargo run --release --manifest-path tests/ggml_oracle/Cargo.toml` (needs cmake, a C/C++
//! compiler and libclang; the first build compiles llama.cpp). Exits non-zero on any mismatch.

use std::ffi::c_void;

use llama_cpp_sys_2 as sys;
use qwen::gguf::{GgmlType, QK_K};
use qwen::quant;

/// The main crate's test generator, copied verbatim (its `XorShift` and `test_row` are test-only).
struct XorShift(u32);

impl XorShift {
    fn new(seed: u32) -> Self {
        XorShift(seed.max(1))
    }
    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f32.sqrt()
    }
}

fn test_row(seed: u32, n: usize) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    let mut x = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(QK_K) {
        let scale = 10f32.powf(rng.uniform() * 6.0 - 3.0);
        let len = QK_K.min(n - chunk * QK_K);
        let kind = if n >= 4 * QK_K { chunk % 8 } else { 0 };
        for i in 0..len {
            let v = match kind {
                1 => 0.0,
                2 => scale,
                3 => scale * rng.uniform(),
                4 if i == 77 => scale * 50.0,
                4 => 0.0,
                5 if i % 37 == 0 => scale * 20.0 * rng.normal(),
                _ => scale * rng.normal(),
            };
            x.push(v);
        }
    }
    x
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn gt(t: GgmlType) -> sys::ggml_type {
    t as u32 as sys::ggml_type
}

fn ggml_quantize_ref(t: GgmlType, x: &[f32]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; t.row_bytes(x.len())?];
    if t == GgmlType::Q8_K {
        // SAFETY: one row of x.len() elements into a buffer of that row's size.
        unsafe {
            quantize_row_q8_K_ref(x.as_ptr(), out.as_mut_ptr() as *mut c_void, x.len() as i64)
        };
        return Some(out);
    }
    // SAFETY: ggml's traits table is static; the buffers have the sizes ggml computes the same way.
    unsafe {
        let f = (*sys::ggml_get_type_traits(gt(t))).from_float_ref?;
        f(x.as_ptr(), out.as_mut_ptr() as *mut c_void, x.len() as i64);
    }
    Some(out)
}

fn ggml_quantize_chunk(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; t.row_bytes(x.len()).unwrap()];
    // SAFETY: one row of x.len() elements into a buffer of exactly that row's size.
    unsafe {
        sys::ggml_quantize_chunk(
            gt(t),
            x.as_ptr(),
            out.as_mut_ptr() as *mut c_void,
            0,
            1,
            x.len() as i64,
            std::ptr::null(),
        );
    }
    out
}

fn ggml_dequantize(t: GgmlType, q: &[u8], n: usize) -> Option<Vec<f32>> {
    let mut y = vec![0f32; n];
    if t == GgmlType::Q8_K {
        // SAFETY: as above.
        unsafe { dequantize_row_q8_K(q.as_ptr() as *const c_void, y.as_mut_ptr(), n as i64) };
        return Some(y);
    }
    // SAFETY: as above.
    unsafe {
        let f = (*sys::ggml_get_type_traits(gt(t))).to_float?;
        f(q.as_ptr() as *const c_void, y.as_mut_ptr(), n as i64);
    }
    Some(y)
}

fn ggml_vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Option<(f32, GgmlType)> {
    // SAFETY: as above; ggml reads one row of each.
    unsafe {
        let tr = &*sys::ggml_get_type_traits_cpu(gt(t));
        let f = tr.vec_dot?;
        let vt = GgmlType::from_id(tr.vec_dot_type as u32)?;
        let mut s = 0f32;
        f(
            n as i32,
            &mut s,
            0,
            w.as_ptr() as *const c_void,
            0,
            a.as_ptr() as *const c_void,
            0,
            1,
        );
        Some((s, vt))
    }
}

type VecDot =
    unsafe extern "C" fn(i32, *mut f32, usize, *const c_void, usize, *const c_void, usize, i32);

// ggml's scalar reference dots (ggml-cpu/quants.c); not in the -sys crate's bindings.
extern "C" {
    fn ggml_vec_dot_q4_0_q8_0_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q4_1_q8_1_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q5_0_q8_0_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q5_1_q8_1_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q8_0_q8_0_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q2_K_q8_K_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q3_K_q8_K_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q4_K_q8_K_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q5_K_q8_K_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
    fn ggml_vec_dot_q6_K_q8_K_generic(
        n: i32,
        s: *mut f32,
        bs: usize,
        vx: *const c_void,
        bx: usize,
        vy: *const c_void,
        by: usize,
        nrc: i32,
    );
}

// Q8_K is missing from ggml's base traits table; its reference functions are exported directly.
extern "C" {
    fn quantize_row_q8_K_ref(x: *const f32, y: *mut c_void, k: i64);
    fn dequantize_row_q8_K(x: *const c_void, y: *mut f32, k: i64);
}

fn generic_dot(t: GgmlType) -> Option<VecDot> {
    use GgmlType::*;
    Some(match t {
        Q4_0 => ggml_vec_dot_q4_0_q8_0_generic,
        Q4_1 => ggml_vec_dot_q4_1_q8_1_generic,
        Q5_0 => ggml_vec_dot_q5_0_q8_0_generic,
        Q5_1 => ggml_vec_dot_q5_1_q8_1_generic,
        Q8_0 => ggml_vec_dot_q8_0_q8_0_generic,
        Q2_K => ggml_vec_dot_q2_K_q8_K_generic,
        Q3_K => ggml_vec_dot_q3_K_q8_K_generic,
        Q4_K => ggml_vec_dot_q4_K_q8_K_generic,
        Q5_K => ggml_vec_dot_q5_K_q8_K_generic,
        Q6_K => ggml_vec_dot_q6_K_q8_K_generic,
        _ => return None,
    })
}

fn call_dot(f: VecDot, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0f32;
    // SAFETY: one row of n elements of each, as ggml expects.
    unsafe {
        f(
            n as i32,
            &mut s,
            0,
            w.as_ptr() as *const c_void,
            0,
            a.as_ptr() as *const c_void,
            0,
            1,
        )
    };
    s
}

fn main() {
    // SAFETY: initializes ggml's CPU tables; called once before any other ggml call.
    unsafe { sys::ggml_cpu_init() };
    let mut failures = 0usize;
    let mut checks = 0usize;
    let mut fail = |what: String| {
        failures += 1;
        if failures <= 40 {
            println!("MISMATCH {what}");
        }
    };

    for t in GgmlType::ALL {
        let mut gen_exact = 0usize;
        let mut gen_worst = 0f64;
        let mut dot_exact = 0usize;
        let mut dot_total = 0usize;
        let mut dot_worst = 0f64;
        for (seed, n) in [
            (1u32, 4096usize),
            (2, 8192),
            (3, 256),
            (4, 16 * 4096),
            (2024, 4096),
        ] {
            let x = test_row(seed, n);
            let mut ours = vec![0u8; t.row_bytes(n).unwrap()];
            quant::quantize_row(t, &x, &mut ours).unwrap();

            if let Some(theirs) = ggml_quantize_ref(t, &x) {
                checks += 1;
                if theirs != ours {
                    let bs = t.type_size();
                    let blk = (0..ours.len() / bs)
                        .find(|&b| ours[b * bs..(b + 1) * bs] != theirs[b * bs..(b + 1) * bs]);
                    let count = (0..ours.len() / bs)
                        .filter(|&b| ours[b * bs..(b + 1) * bs] != theirs[b * bs..(b + 1) * bs])
                        .count();
                    fail(format!(
                        "{t} quantize_row_ref seed {seed} n {n}: {count} blocks differ, first {blk:?}"
                    ));
                }
                if seed == 2024 {
                    println!("GOLDEN {t} {:#018x}", fnv1a(&theirs));
                }
            } else if seed == 1 {
                println!("note: ggml has no from_float_ref for {t} (not compared)");
            }
            if !matches!(t, GgmlType::Q8_1 | GgmlType::Q8_K) {
                checks += 1;
                if ggml_quantize_chunk(t, &x) != ours {
                    fail(format!("{t} ggml_quantize_chunk seed {seed} n {n}"));
                }
            }

            let mut y = vec![0f32; n];
            quant::dequantize_row(t, &ours, &mut y).unwrap();
            if let Some(theirs) = ggml_dequantize(t, &ours, n) {
                checks += 1;
                let bad = y
                    .iter()
                    .zip(&theirs)
                    .position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()));
                if let Some(i) = bad {
                    fail(format!(
                        "{t} dequantize n {n}: y[{i}] {} vs ggml {}",
                        y[i], theirs[i]
                    ));
                }
            } else if seed == 1 {
                println!("note: ggml has no to_float for {t} (not compared)");
            }

            // Dots: rows of the weight against one activation row, both as we encode them.
            let act_x = test_row(seed + 1000, n);
            let mut act = Vec::new();
            quant::quantize_activation(t, &act_x, &mut act);
            let our_dot = quant::vec_dot(t, n, &ours, &act);
            if let Some(f) = generic_dot(t) {
                let theirs = call_dot(f, n, &ours, &act);
                if theirs.to_bits() == our_dot.to_bits() {
                    gen_exact += 1;
                } else {
                    let rel =
                        (our_dot as f64 - theirs as f64).abs() / (theirs.abs() as f64).max(1e-30);
                    gen_worst = gen_worst.max(rel);
                    if rel > 1e-5 {
                        fail(format!(
                            "{t} generic vec_dot n {n}: ours {our_dot} vs ggml {theirs}"
                        ));
                    }
                }
            }
            if let Some((theirs, vt)) = ggml_vec_dot(t, n, &ours, &act) {
                if vt != quant::vec_dot_type(t) {
                    if !matches!(t, GgmlType::F16 | GgmlType::BF16) {
                        fail(format!("{t}: ggml's vec_dot_type is {vt}"));
                    }
                    continue; // by design we keep f32 activations for float weights
                }
                let ours = quant::vec_dot(t, n, &ours, &act);
                dot_total += 1;
                if ours.to_bits() == theirs.to_bits() {
                    dot_exact += 1;
                } else {
                    let rel =
                        (ours as f64 - theirs as f64).abs() / (theirs.abs() as f64).max(1e-30);
                    dot_worst = dot_worst.max(rel);
                    if rel > 1e-4 {
                        fail(format!("{t} vec_dot n {n}: ours {ours} vs ggml {theirs}"));
                    }
                }
            }
        }
        if dot_total > 0 {
            let generic = if generic_dot(t).is_some() {
                format!("; {gen_exact}/{dot_total} to its scalar _generic (worst {gen_worst:.2e})")
            } else {
                String::new()
            };
            println!(
                "{t:5} vec_dot: {dot_exact}/{dot_total} bit-identical to ggml's CPU kernel (worst relative difference {dot_worst:.2e}){generic}"
            );
        }
    }
    println!("{checks} byte/bit comparisons, {failures} mismatches");
    if failures > 0 {
        std::process::exit(1);
    }
}
