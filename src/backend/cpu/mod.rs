//! The CPU backend: a worker pool, portable f32 ops and quantized matrix products.
pub mod matmul;
pub mod ops;
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

pub use matmul::{matmul, WeightMatrix};
pub use pool::{default_threads, ThreadPool};
