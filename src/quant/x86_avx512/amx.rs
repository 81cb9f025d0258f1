//! AMX (Advanced Matrix Extensions, Intel Sapphire Rapids and later) tiles for the Q5_0, Q4_K
//! and Q6_K matrix products of the AVX-512 build: one `tdpbssd` multiplies 16 activation rows by
//! 16 weight rows over 32 or 64 elements (up to 16·16·64 products, 256 `vpdpbusd`), and the
//! float work stays on AVX-512. Where a weight and its sub-block scale do not fit one
//! byte together (Q4_K, Q6_K), both are split so that every product does, and the block's
//! integer is a sum of a few shifted tile products.
//!
//! The tile layouts fit the panels of `super::gemm` as they are: a panel's group `g` (lane `r`
//! holds elements `4g..4g+4` of weight row `r`) is row `g` of AMX's B operand, whose rows hold
//! 4 consecutive K elements for each of 16 columns. The A operand (16 rows × K bytes) is read
//! from the copy of its quants each matrix-product activation row carries on a cache line
//! (`quant::tile_quants_offset`), rows `arb` bytes apart. So tile C holds, for
//! activation row `t` (tile row) and weight row `r` (column), the exact integer of one block:
//! row `t` of C is the 16-lane vector the register tiles build for that activation row, and it
//! enters the same f32 chain (`acc = fma(d_w·d_a, float(block integer), acc)`) in the same order.
//! The results keep this build's bits; `gemm_tests` checks them against `vec_dot` bit for bit
//! on every machine that has AMX.
//!
//! The tile instructions are written in `asm!`: Rust's AMX intrinsics are not stable. Using
//! tiles needs the kernel's permission (Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once by
//! [`detected`]) and a tile configuration in each thread (`ldtilecfg`, per matrix product:
//! [`Config`], released when the product ends).

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::gemm::{ld, ld_ps, st_ps, Acc, PanelQ4K, PanelQ5_0, PanelQ6K, WideTile, WIDE};

/// Whether this CPU and OS run AMX-INT8 tiles (and the AVX-512 build): CPUID's AMX-TILE and
/// AMX-INT8 bits, and the Linux kernel's permission to use the tile data state, requested once
/// for the process.
pub(in crate::quant) fn detected() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| super::detected() && cpu_has_amx_int8() && request_tile_data())
}

fn cpu_has_amx_int8() -> bool {
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX2 (checked by the caller first).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    const AMX_TILE: u32 = 1 << 24;
    const AMX_INT8: u32 = 1 << 25;
    leaf7.edx & (AMX_TILE | AMX_INT8) == AMX_TILE | AMX_INT8
}

/// Asks Linux for the AMX tile data state (`XFEATURE_XTILEDATA`); without it the first tile
/// instruction faults. Other systems: no AMX here.
fn request_tile_data() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it only changes this process's
        // permitted extended state.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        false
    }
}

/// A tile configuration (palette 1): rows and bytes per row of each tile register. Loading it
/// (`ldtilecfg`) zeroes every tile; dropping it releases the tiles (`tilerelease`), so a thread
/// holds the large tile state only during a matrix product.
#[repr(C, align(64))]
pub(super) struct Config([u8; 64]);

impl Config {
    /// Configures this thread's tiles: `shapes[i]` = (rows, bytes per row) of tile `tmm{i}`.
    /// Only for a CPU where [`detected`] holds.
    pub(super) fn load(shapes: &[(u8, u16)]) -> Config {
        assert!(detected() && shapes.len() <= 8);
        let mut c = Config([0; 64]);
        c.0[0] = 1; // palette 1
        for (i, &(rows, colsb)) in shapes.iter().enumerate() {
            assert!(rows <= 16 && colsb <= 64);
            c.0[16 + 2 * i..18 + 2 * i].copy_from_slice(&colsb.to_le_bytes());
            c.0[48 + i] = rows;
        }
        // SAFETY: AMX is present and permitted (asserted); the 64-byte configuration is valid
        // (palette 1, every shape within the palette's 16 rows × 64 bytes).
        unsafe { asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly)) };
        c
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: this thread's tiles were configured by `load` (AMX present and permitted).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A tile of 16 rows × 16 i32, 64-byte rows (tile C stored for the AVX-512 epilogue).
#[repr(C, align(64))]
pub(super) struct IntTile([[i32; 16]; 16]);

// ---------------------------------------------------------------------------------------------
// Q5_0 against Q8_0 activations.

/// The B operands of a Q5_0 chunk, on cache lines: a tile row that straddles two lines loads
/// several times slower (a 1 KiB tile: 16.4 against 2.4 ns, measured here).
#[repr(C, align(64))]
struct Aligned512([[i8; 512]; Q5_0_CHUNK]);

/// Bytes of a Q8_0 activation block: the f16 scale, then 32 quants.
const Q8_0_BLOCK: usize = 34;
/// Q5_0 blocks per panel chunk (`gemm`'s chunk for Q5_0).
const Q5_0_CHUNK: usize = 64;

/// The wide tile for Q5_0 weights: per block, `tdpbssd` of the 16 activation rows' quants (A:
/// 16 × 32 bytes) with the weights' quants minus 16 (B: 8 × 64 bytes, 16 rows × 32 quants: the
/// panel made signed by [`WideTile::prepare`]) gives `Σ (q − 16)·y`, the integer the register
/// tile builds as `Σ q·y − 16·Σ y`.
pub(super) struct Q5_0Tiles<'a> {
    act: &'a [u8],
    arb: usize,
    qrb: usize,
    /// Where each row's copy of its quants starts (`quant::tile_quants_offset`).
    tq: usize,
    /// Each panel block's B operand: the quants minus 16 as i8, in the panel's group order.
    b: Aligned512,
    _config: Config,
}

impl<'a> Q5_0Tiles<'a> {
    /// Tiles 0 and 3: C (16 × 16 i32); 1 and 4: A (16 rows × 32 bytes); 2 and 5: B (8 × 64).
    pub(super) fn new(act: &'a [u8], arb: usize, qrb: usize, tq: usize) -> Self {
        let config = Config::load(&[(16, 64), (16, 32), (8, 64), (16, 64), (16, 32), (8, 64)]);
        Q5_0Tiles {
            act,
            arb,
            qrb,
            tq,
            b: Aligned512([[0; 512]; Q5_0_CHUNK]),
            _config: config,
        }
    }
}

impl WideTile<PanelQ5_0> for Q5_0Tiles<'_> {
    fn prepare(&mut self, panel: &[PanelQ5_0]) {
        // SAFETY: built only where `amx::detected` holds (`Config::load` asserts it), which
        // includes the AVX-512 subsets of this function.
        unsafe { signed_q5_0(panel, &mut self.b.0) }
    }

    fn run(&mut self, panel: &[PanelQ5_0], b0: usize, t: usize, tiles: usize, acc: &mut [Acc]) {
        for (k, acc) in acc.chunks_exact_mut(WIDE).take(tiles).enumerate() {
            let t = t + k * WIDE;
            // SAFETY: as in `prepare`; this thread's tiles are configured for Q5_0 (`new`).
            unsafe {
                tile16_q5_0(
                    panel,
                    &self.b.0,
                    b0,
                    self.act,
                    (self.arb, self.qrb, self.tq),
                    t,
                    acc,
                )
            }
        }
    }
}

/// `out[i]` = panel block `i`'s quants minus 16, as bytes (each in −16..=15).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn signed_q5_0(panel: &[PanelQ5_0], out: &mut [[i8; 512]]) {
    for (p, o) in panel.iter().zip(out) {
        for (src, dst) in p.q.iter().zip(o.chunks_exact_mut(64)) {
            let v = _mm512_sub_epi8(ld(src), _mm512_set1_epi8(16));
            // SAFETY: `dst` is 64 writable bytes; no alignment needed.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
        }
    }
}

/// Blocks `b0..b0 + panel.len()` of a Q5_0 panel (`b`: its signed B operands) against the 16
/// activation rows `t..t + 16` of `act` (rows `arb` bytes apart: the Q8_0 row in `qrb` bytes,
/// its side data (per block the scale as f32 and Σ q), and from byte `tq` the quants alone),
/// into `acc[..16]`.
///
/// # Safety
/// AMX must be present and permitted, with this thread's tiles configured by
/// [`Q5_0Tiles::new`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile16_q5_0(
    panel: &[PanelQ5_0],
    b: &[[i8; 512]],
    b0: usize,
    act: &[u8],
    (arb, qrb, tq): (usize, usize, usize),
    t: usize,
    acc: &mut [Acc],
) {
    let acc = &mut acc[..WIDE];
    let n = panel.len();
    // The tile loads read rows t..t + 16, blocks b0..b0 + n, and the side data of those blocks.
    assert!(b.len() >= n && (b0 + n) * Q8_0_BLOCK <= qrb && qrb + 8 * (b0 + n) <= tq);
    assert!(tq + 32 * (b0 + n) <= arb);
    assert!((t + WIDE) * arb <= act.len());
    let rows = &act[t * arb..(t + WIDE) * arb];
    let mut a: [__m512; WIDE] = [_mm512_setzero_ps(); WIDE];
    for (a, acc) in a.iter_mut().zip(acc.iter()) {
        *a = ld_ps(&acc[0]);
    }
    // Tile C stored for the float work, two buffers alternating by block (per call: across all
    // the chunk's blocks).
    let mut cs = [IntTile([[0; 16]; 16]), IntTile([[0; 16]; 16])];
    // Two sets of tiles, alternating by block, so that block i + 1's tile product can run while
    // the AVX-512 units scale block i's integers; block i + 1's store comes after that scaling
    // in program order (a store has to wait for its product).
    let product = |i: usize| {
        let a = rows[tq + 32 * (b0 + i)..].as_ptr();
        let b = b[i].as_ptr();
        // SAFETY: A reads 16 rows of 32 bytes at `rows[tq + 32·(b0 + i) + j·arb]`, inside
        // `rows` (asserted above); B reads 8 × 64 bytes of `b[i]` (512 bytes). Tiles 0-5 are
        // configured as C, A, B twice (the caller's contract).
        unsafe {
            if i.is_multiple_of(2) {
                asm!(
                    "tileloadd tmm1, [{a} + {sa} * 1]",
                    "tileloadd tmm2, [{b} + {sb} * 1]",
                    "tilezero tmm0",
                    "tdpbssd tmm0, tmm1, tmm2",
                    a = in(reg) a, sa = in(reg) arb, b = in(reg) b, sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tileloadd tmm4, [{a} + {sa} * 1]",
                    "tileloadd tmm5, [{b} + {sb} * 1]",
                    "tilezero tmm3",
                    "tdpbssd tmm3, tmm4, tmm5",
                    a = in(reg) a, sa = in(reg) arb, b = in(reg) b, sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
    };
    let store = |i: usize, c: &mut IntTile| {
        // SAFETY: C (16 rows of 64 bytes) goes into the 1 KiB `c`; tile 0 or 3 holds block i's
        // product (`product(i)` ran).
        unsafe {
            if i.is_multiple_of(2) {
                asm!(
                    "tilestored [{c} + {s} * 1], tmm0",
                    c = in(reg) c.0.as_mut_ptr(),
                    s = in(reg) 64usize,
                    options(nostack),
                );
            } else {
                asm!(
                    "tilestored [{c} + {s} * 1], tmm3",
                    c = in(reg) c.0.as_mut_ptr(),
                    s = in(reg) 64usize,
                    options(nostack),
                );
            }
        }
    };
    // Two blocks ahead: block i + 1's C goes to memory before block i's integers are scaled,
    // so that the vector loads of a C never follow its tile store closely (tile stores do not
    // forward to loads), and block i + 2's product runs meanwhile.
    if n > 0 {
        product(0);
        if n > 1 {
            product(1);
        }
        store(0, &mut cs[0]);
    }
    for (i, p) in panel.iter().enumerate() {
        if i + 1 < n {
            store(i + 1, &mut cs[(i + 1) % 2]);
        }
        if i + 2 < n {
            product(i + 2);
        }
        let c = &cs[i % 2];
        let d = ld_ps(&p.d);
        // Row 0's scale of this block; row j's is `arb·j` bytes on.
        let side = rows[qrb + 8 * (b0 + i)..].as_ptr();
        for (j, a) in a.iter_mut().enumerate() {
            // SAFETY: row j's side data of block b0 + i lies inside `rows` (asserted above:
            // qrb + 8·(b0 + n) <= tq); `read_unaligned` needs no alignment. Row j of `c` is
            // 16 readable i32. (Raw reads: bounds checks kept this loop from unrolling, and the
            // accumulators went to the stack.)
            let (dy, s) = unsafe {
                (
                    side.add(j * arb).cast::<f32>().read_unaligned(),
                    _mm512_loadu_si512(c.0[j].as_ptr().cast()),
                )
            };
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(dy));
            *a = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s), *a);
        }
    }
    for (a, acc) in a.into_iter().zip(acc.iter_mut()) {
        st_ps(&mut acc[0], a);
    }
}

// ---------------------------------------------------------------------------------------------
// The K-quants (Q4_K, Q6_K) against Q8_K activations.

/// Bytes of a Q8_K activation block: the f32 scale, 256 quants, 16 i16 sums.
const Q8_K_BLOCK: usize = 292;

/// Where things are in the matrix-product activation rows of a K-quant (Q8_K rows).
#[derive(Clone, Copy)]
pub(super) struct Layout {
    /// Bytes from one activation row to the next.
    pub(super) arb: usize,
    /// Where each row's copy of its quants starts (`quant::tile_quants_offset`).
    pub(super) tq: usize,
    /// Where each row's sub-block sums start (`quant::tile_sums_offset`): per block, the sums of
    /// its eight 32-element sub-blocks as i16, back to back.
    pub(super) ts: usize,
}

/// The C tiles a K-quant's tile products are stored into for the float work: Q4_K's hi and lo
/// of two token tiles, Q6_K's four products of one.
pub(super) type CRoom = [IntTile; 4];

/// What a K-quant's wide tile ([`KTiles`]) needs from its type: B operands built from a panel
/// block, split so that every product fits a byte, and the tile products of one block against
/// one or two token tiles of 16 activation rows (into C tiles stored in a [`CRoom`], then the
/// register tile's float chains).
pub(super) trait KOperands: Sized {
    type Panel;
    /// Zeroed operands.
    fn zeroed() -> Self;
    /// Derives the B operands of panel block `p`.
    ///
    /// # Safety
    /// The CPU must run the AVX-512 build (`amx::detected` holds).
    unsafe fn fill(&mut self, p: &Self::Panel);
    /// Token tiles [`KOperands::tiles`] runs at once: 2 where the operands leave room in the
    /// tile registers for two tiles' C, which then share each B load.
    const TILES: usize;
    /// Panel block `p` (its operands filled), block `blk` of the rows, against the `n`
    /// (1..=`TILES`) token tiles of activation rows from `t` of `act` (see [`Layout`]), into
    /// `acc[..16·n]`.
    ///
    /// # Safety
    /// AMX must be present and permitted, with this thread's tiles configured by
    /// [`KTiles::new`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        p: &Self::Panel,
        ops: (&Self, &mut CRoom),
        blk: usize,
        act: &[u8],
        layout: Layout,
        t: usize,
        n: usize,
        acc: &mut [Acc],
    );
}

/// The wide tile of a K-quant (see [`KOperands`]; [`Q4KTiles`], [`Q6KTiles`]). Blocks run in
/// the outer loop, token tiles (`TILES` at a time) in the inner one: a block's operands (8-16
/// KiB) stay in L1 while every token tile reads them (the accumulators are in memory anyway).
pub(super) struct KTiles<'a, O: KOperands> {
    act: &'a [u8],
    layout: Layout,
    b: O,
    /// The C tiles stored for the float work (a field: zeroing them per block and token tile
    /// was a memset call each time, 4% of a prefill).
    c: CRoom,
    _config: Config,
}

/// The Q4_K wide tile: tiles 0 and 7 A (16 activation rows × 64 quants), 1-2 B (hi, lo), 3-6
/// C (hi, lo of two token tiles).
pub(super) type Q4KTiles<'a> = KTiles<'a, Q4KOperands>;
/// The Q6_K wide tile: tile 0 A, 1-3 B (the fourth product reuses tile 1), 4-7 C (hh, lh, hl,
/// ll).
pub(super) type Q6KTiles<'a> = KTiles<'a, Q6KOperands>;

impl<'a, O: KOperands> KTiles<'a, O> {
    /// All eight tiles 16 × 64 bytes.
    pub(super) fn new(act: &'a [u8], layout: Layout) -> Self {
        let config = Config::load(&[(16, 64); 8]);
        KTiles {
            act,
            layout,
            b: O::zeroed(),
            c: std::array::from_fn(|_| IntTile([[0; 16]; 16])),
            _config: config,
        }
    }
}

impl<O: KOperands> WideTile<O::Panel> for KTiles<'_, O> {
    fn prepare(&mut self, _: &[O::Panel]) {}

    fn run(&mut self, panel: &[O::Panel], b0: usize, t: usize, tiles: usize, acc: &mut [Acc]) {
        for (i, p) in panel.iter().enumerate() {
            // SAFETY: built only where `amx::detected` holds (`Config::load` asserts it), which
            // includes the AVX-512 subsets; this thread's tiles are configured by `new`.
            unsafe {
                self.b.fill(p);
                let mut k = 0;
                while k < tiles {
                    let n = O::TILES.min(tiles - k);
                    let (b, c) = (&self.b, &mut self.c);
                    let acc = &mut acc[k * WIDE..(k + n) * WIDE];
                    O::tiles(
                        p,
                        (b, c),
                        b0 + i,
                        self.act,
                        self.layout,
                        t + k * WIDE,
                        n,
                        acc,
                    );
                    k += n;
                }
            }
        }
    }
}

/// Stores `v` into the 64 bytes of one B-operand row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn st(dst: &mut [i8; 64], v: __m512i) {
    // SAFETY: `dst` is 64 writable bytes; no alignment needed.
    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) }
}

/// Each i32 lane's low i16 in both of its halves (a lane's factor for a 16-bit multiply of its
/// four bytes: each product < 256, so no carry into the next byte).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn both(v: __m512i) -> __m512i {
    _mm512_or_si512(v, _mm512_slli_epi32::<16>(v))
}

// ---------------------------------------------------------------------------------------------
// Q4_K.

/// A Q4_K block's two B operands for 16 weight rows, each 64 groups of 4 elements (the panel's
/// order; 16 groups per 64-element tdp step): the quants times the high and the low three bits
/// of their sub-block's 6-bit scale.
///
/// A sub-block scale (6 bits) times a quant (4 bits) does not fit a byte, so the scale is split,
/// `sc = 8·sh + sl` (`sh`, `sl` ≤ 7): `q·sh` and `q·sl` do (≤ 105), and the products over the
/// whole 256-element block give the register tile's exact integer `Σ_j sc_j·Σ q·y = 8·C_hi +
/// C_lo`, accumulated in tiles over the block's four 64-element steps. The minimums' integer
/// `Σ_j m_j·Σ y` is exact in vector registers: four `vpdpwssd` per activation row, each of two
/// sub-blocks' minimums (`mins2`) against the row's two 32-element sums, which AMX activation
/// rows carry (`quant::tile_sums_offset`). That frees the tile registers a third product
/// took, so two token tiles run together sharing each B load (`TILES` = 2): `bench_gemm --rows
/// 256 --tokens 256 --types q4_k` 335-365 -> 372-398 MAC/ns. (With the minimums from the Q8_K
/// block's 16-element sums, eight `vpdpwssd` a row, the pairs were no faster than the third
/// product.)
#[repr(C, align(64))]
pub(super) struct Q4KOperands {
    hi: [[i8; 64]; 64],
    lo: [[i8; 64]; 64],
    /// Lane r: the minimums of sub-blocks 2k (low i16) and 2k + 1 (high i16) of row r.
    mins2: [[i32; 16]; 4],
}

impl KOperands for Q4KOperands {
    type Panel = PanelQ4K;
    const TILES: usize = 2;

    fn zeroed() -> Self {
        Q4KOperands {
            hi: [[0; 64]; 64],
            lo: [[0; 64]; 64],
            mins2: [[0; 16]; 4],
        }
    }

    unsafe fn fill(&mut self, p: &PanelQ4K) {
        // SAFETY: the caller's contract (AVX-512).
        unsafe { q4k_operands(p, self) }
    }

    unsafe fn tiles(
        p: &PanelQ4K,
        ops: (&Self, &mut CRoom),
        blk: usize,
        act: &[u8],
        layout: Layout,
        t: usize,
        n: usize,
        acc: &mut [Acc],
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            match n {
                1 => q4k_tiles::<1>(p, ops, blk, act, layout, t, acc),
                _ => q4k_tiles::<2>(p, ops, blk, act, layout, t, acc),
            }
        }
    }
}

/// Panel block `p` (its operands `ops` filled), block `blk` of the rows, against the `N` (1 or
/// 2) token tiles of activation rows from `t`: the tile products, then the float chains into
/// `acc[..16·N]`.
///
/// # Safety
/// AMX must be present and permitted, with this thread's tiles configured by
/// [`KTiles::new`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4k_tiles<const N: usize>(
    p: &PanelQ4K,
    (ops, c): (&Q4KOperands, &mut CRoom),
    blk: usize,
    act: &[u8],
    layout: Layout,
    t: usize,
    acc: &mut [Acc],
) {
    let rows = q4k_rows(blk, act, layout, t, N);
    // SAFETY: the caller's contract; `rows` holds the activation rows (checked by `q4k_rows`).
    unsafe { q4k_products::<N>(ops, c, blk, rows, layout) };
    for (k, acc) in acc[..N * WIDE].chunks_exact_mut(WIDE).enumerate() {
        let tile = &rows[k * WIDE * layout.arb..];
        q4k_epilogue(p, ops, (&c[2 * k], &c[2 * k + 1]), blk, tile, layout, acc);
    }
}

/// The B operands of a panel block (see [`Q4KOperands`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_operands(p: &PanelQ4K, o: &mut Q4KOperands) {
    for j in 0..8 {
        let sc = ld(&p.sc[j]);
        // Lane r: the row's scale parts in both i16 halves, so that one 16-bit multiply
        // scales all four bytes (each product < 256: no carry into the next byte).
        let sh = both(_mm512_srli_epi32::<3>(sc));
        let sl = both(_mm512_and_si512(sc, _mm512_set1_epi32(7)));
        for g in 8 * j..8 * j + 8 {
            let q = ld(&p.q[g]);
            st(&mut o.hi[g], _mm512_mullo_epi16(q, sh));
            st(&mut o.lo[g], _mm512_mullo_epi16(q, sl));
        }
    }
    // `mn[j]` holds m_j in both i16 halves: keep the low one of 2k, move 2k + 1's up.
    for (k, m2) in o.mins2.iter_mut().enumerate() {
        let (even, odd) = (ld(&p.mn[2 * k]), ld(&p.mn[2 * k + 1]));
        let v = _mm512_or_si512(
            _mm512_and_si512(even, _mm512_set1_epi32(0xffff)),
            _mm512_slli_epi32::<16>(odd),
        );
        // SAFETY: `m2` is 64 writable bytes; no alignment needed.
        unsafe { _mm512_storeu_si512(m2.as_mut_ptr().cast(), v) };
    }
}

/// The `16·n` activation rows from `t` (rows `arb` bytes apart, each a Q8_K row and from byte
/// `tq` a copy of its quants), after checking that block `blk` of each lies inside them.
fn q4k_rows(blk: usize, act: &[u8], l: Layout, t: usize, n: usize) -> &[u8] {
    let Layout { arb, tq, ts } = l;
    assert!((blk + 1) * Q8_K_BLOCK <= tq && tq + 256 * (blk + 1) <= ts);
    assert!(ts + 16 * (blk + 1) <= arb);
    assert!((t + n * WIDE) * arb <= act.len());
    &act[t * arb..(t + n * WIDE) * arb]
}

/// The tile products of block `blk` (B operands `ops`) against `N` (1 or 2) token tiles of 16
/// `rows`, stored as C tiles: hi and lo of the first tile in `c[0]`, `c[1]`, of the second in
/// `c[2]`, `c[3]`.
///
/// # Safety
/// AMX must be present and permitted, with this thread's tiles configured by [`KTiles::new`];
/// `rows` must hold `16·N` rows whose block `blk` lies inside (see [`q4k_rows`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4k_products<const N: usize>(
    ops: &Q4KOperands,
    c: &mut CRoom,
    blk: usize,
    rows: &[u8],
    Layout { arb, tq, .. }: Layout,
) {
    debug_assert!(rows.len() >= N * WIDE * arb);
    let a = |k: usize| rows[tq + 256 * blk + 64 * k..].as_ptr();
    // SAFETY: A reads 16 rows of 64 bytes at `rows[tq + 256·blk + 64k + j·arb]` (plus 16 rows
    // for the second token tile), inside `rows` (the caller's contract); each B read is 16 × 64
    // bytes of a 4 KiB operand; the C tiles go to the 1 KiB buffers of `c`. Tiles 0-7 are
    // configured 16 × 64 bytes (the caller's contract).
    unsafe {
        asm!(
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            options(nostack, nomem)
        );
        for k in 0..4 {
            if N == 2 {
                // Both token tiles against one load of each B operand.
                asm!(
                    "tileloadd tmm1, [{hi} + {s} * 1]",
                    "tileloadd tmm0, [{a0} + {sa} * 1]",
                    "tdpbssd tmm3, tmm0, tmm1",
                    "tileloadd tmm2, [{lo} + {s} * 1]",
                    "tdpbssd tmm4, tmm0, tmm2",
                    "tileloadd tmm7, [{a1} + {sa} * 1]",
                    "tdpbssd tmm5, tmm7, tmm1",
                    "tdpbssd tmm6, tmm7, tmm2",
                    a0 = in(reg) a(k),
                    a1 = in(reg) a(k).add(WIDE * arb),
                    sa = in(reg) arb,
                    hi = in(reg) ops.hi[16 * k..].as_ptr(),
                    lo = in(reg) ops.lo[16 * k..].as_ptr(),
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            } else if k % 2 == 0 {
                // A alternates between tiles 0 and 7, and B between 1-2 and 5-6, so that the
                // next step's loads need not wait for the products reading this step's tiles
                // (tiles are not renamed).
                asm!(
                    "tileloadd tmm1, [{hi} + {s} * 1]",
                    "tileloadd tmm0, [{a0} + {sa} * 1]",
                    "tdpbssd tmm3, tmm0, tmm1",
                    "tileloadd tmm2, [{lo} + {s} * 1]",
                    "tdpbssd tmm4, tmm0, tmm2",
                    a0 = in(reg) a(k),
                    sa = in(reg) arb,
                    hi = in(reg) ops.hi[16 * k..].as_ptr(),
                    lo = in(reg) ops.lo[16 * k..].as_ptr(),
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tileloadd tmm5, [{hi} + {s} * 1]",
                    "tileloadd tmm7, [{a0} + {sa} * 1]",
                    "tdpbssd tmm3, tmm7, tmm5",
                    "tileloadd tmm6, [{lo} + {s} * 1]",
                    "tdpbssd tmm4, tmm7, tmm6",
                    a0 = in(reg) a(k),
                    sa = in(reg) arb,
                    hi = in(reg) ops.hi[16 * k..].as_ptr(),
                    lo = in(reg) ops.lo[16 * k..].as_ptr(),
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
        asm!(
            "tilestored [{c0} + {s} * 1], tmm3",
            "tilestored [{c1} + {s} * 1], tmm4",
            c0 = in(reg) c[0].0.as_mut_ptr(),
            c1 = in(reg) c[1].0.as_mut_ptr(),
            s = in(reg) 64usize,
            options(nostack),
        );
        if N == 2 {
            asm!(
                "tilestored [{c2} + {s} * 1], tmm5",
                "tilestored [{c3} + {s} * 1], tmm6",
                c2 = in(reg) c[2].0.as_mut_ptr(),
                c3 = in(reg) c[3].0.as_mut_ptr(),
                s = in(reg) 64usize,
                options(nostack),
            );
        }
    }
}

/// The register tile's float chains for 16 activation `rows` of block `blk`: the block integer
/// `8·C_hi + C_lo` from the stored tiles `hi`, `lo`, the minimums' integer from the rows'
/// sub-block sums (four `vpdpwssd`, two sub-blocks each), into `acc[..16]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_epilogue(
    p: &PanelQ4K,
    ops: &Q4KOperands,
    (hi, lo): (&IntTile, &IntTile),
    blk: usize,
    rows: &[u8],
    Layout { arb, ts, .. }: Layout,
    acc: &mut [Acc],
) {
    let (d, dmin) = (ld_ps(&p.d), ld_ps(&p.dmin));
    let mins2: [__m512i; 4] = std::array::from_fn(|k| ld(&ops.mins2[k]));
    for (j, acc) in acc[..WIDE].iter_mut().enumerate() {
        let row = &rows[j * arb..(j + 1) * arb];
        let y = &row[blk * Q8_K_BLOCK..][..4];
        let dy = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let sums = &row[ts + 16 * blk..][..16];
        let mut mins = _mm512_setzero_si512();
        for (k, &m) in mins2.iter().enumerate() {
            let s = &sums[4 * k..4 * k + 4];
            let pair = i32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            mins = _mm512_dpwssd_epi32(mins, m, _mm512_set1_epi32(pair));
        }
        let sumi = _mm512_add_epi32(_mm512_slli_epi32::<3>(ld(&hi.0[j])), ld(&lo.0[j]));
        let yd = _mm512_set1_ps(dy);
        let a0 = _mm512_fmadd_ps(
            _mm512_mul_ps(d, yd),
            _mm512_cvtepi32_ps(sumi),
            ld_ps(&acc[0]),
        );
        let a1 = _mm512_fmadd_ps(
            _mm512_mul_ps(dmin, yd),
            _mm512_cvtepi32_ps(mins),
            ld_ps(&acc[1]),
        );
        st_ps(&mut acc[0], a0);
        st_ps(&mut acc[1], a1);
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K.

/// A Q6_K block's four B operands for 16 weight rows (64 groups of 4 elements, the panel's
/// order). With the quant less its offset `q − 32 = 8·qh + ql` (`ql` in 0..=7, `qh` in
/// −4..=3) and its 16-element sub-block's scale `sc = 16·sh + sl` (`sl` in 0..=15, `sh` in
/// −8..=7), `(q − 32)·sc = 128·qh·sh + 16·ql·sh + 8·qh·sl + ql·sl`, and each of those four
/// products is a byte (−60..=105). The four tile products over the whole 256-element block
/// give the register tile's exact integer `Σ_h sc_h·Σ (q − 32)·y = 128·C_hh + 16·C_lh +
/// 8·C_hl + C_ll` (the register tile forms it as `Σ_h sc_h·Σ q·y − 32·Σ_h sc_h·Σ y`), which
/// enters the same float chain.
#[repr(C, align(64))]
pub(super) struct Q6KOperands {
    hh: [[i8; 64]; 64],
    lh: [[i8; 64]; 64],
    hl: [[i8; 64]; 64],
    ll: [[i8; 64]; 64],
}

impl KOperands for Q6KOperands {
    type Panel = PanelQ6K;
    const TILES: usize = 1;

    fn zeroed() -> Self {
        Q6KOperands {
            hh: [[0; 64]; 64],
            lh: [[0; 64]; 64],
            hl: [[0; 64]; 64],
            ll: [[0; 64]; 64],
        }
    }

    unsafe fn fill(&mut self, p: &PanelQ6K) {
        // SAFETY: the caller's contract (AVX-512).
        unsafe { q6k_operands(p, self) }
    }

    unsafe fn tiles(
        p: &PanelQ6K,
        ops: (&Self, &mut CRoom),
        blk: usize,
        act: &[u8],
        layout: Layout,
        t: usize,
        _: usize,
        acc: &mut [Acc],
    ) {
        // SAFETY: the caller's contract (AMX, tiles configured by `KTiles::new`).
        unsafe { tile16_q6k(p, ops, blk, act, layout, t, acc) }
    }
}

/// The B operands of a panel block (see [`Q6KOperands`]). Byte products come from 16-bit
/// multiplies of non-negative bytes by a lane's non-negative factor in both i16 halves (each
/// product < 256: no carry into the next byte); the signed factors are shifted to non-negative
/// ones and the shift subtracted again in bytes (wrapping arithmetic, exact in the end).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_operands(p: &PanelQ6K, o: &mut Q6KOperands) {
    // A lane's value (< 64, in both i16 halves) in all four of its bytes.
    let bytes = |v: __m512i| _mm512_or_si512(v, _mm512_slli_epi16::<8>(v));
    let seven = _mm512_set1_epi8(7);
    for h in 0..16 {
        let sc = ld(&p.sc[h]);
        let sl = both(_mm512_and_si512(sc, _mm512_set1_epi32(15)));
        // sh + 8, in 0..=15.
        let v = both(_mm512_add_epi32(
            _mm512_srai_epi32::<4>(sc),
            _mm512_set1_epi32(8),
        ));
        let sl4 = _mm512_slli_epi16::<2>(bytes(sl));
        let v4 = _mm512_slli_epi16::<2>(bytes(v));
        for g in 4 * h..4 * h + 4 {
            let q = ld(&p.q[g]);
            let ql = _mm512_and_si512(q, seven);
            // qh + 4 = q >> 3, in 0..=7.
            let u = _mm512_and_si512(_mm512_srli_epi16::<3>(q), seven);
            st(&mut o.ll[g], _mm512_mullo_epi16(ql, sl));
            // (qh + 4)·sl − 4·sl
            st(
                &mut o.hl[g],
                _mm512_sub_epi8(_mm512_mullo_epi16(u, sl), sl4),
            );
            // ql·(sh + 8) − 8·ql
            let ql8 = _mm512_slli_epi16::<3>(ql);
            st(
                &mut o.lh[g],
                _mm512_sub_epi8(_mm512_mullo_epi16(ql, v), ql8),
            );
            // (qh + 4)·(sh + 8) − 8·(qh + 4) − 4·(sh + 8) + 32
            let p = _mm512_sub_epi8(_mm512_mullo_epi16(u, v), _mm512_slli_epi16::<3>(u));
            st(
                &mut o.hh[g],
                _mm512_add_epi8(_mm512_sub_epi8(p, v4), _mm512_set1_epi8(32)),
            );
        }
    }
}

/// Panel block `p` (`ops`: its B operands; `c`: room for the C tiles), block `blk` of the
/// rows, against the 16 activation rows `t..t + 16` of `act` (rows `arb` bytes apart: the Q8_K
/// row, then from byte `tq` its quants alone), into `acc[..16]`.
///
/// # Safety
/// AMX must be present and permitted, with this thread's tiles configured by
/// [`KTiles::new`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile16_q6k(
    p: &PanelQ6K,
    (ops, c): (&Q6KOperands, &mut CRoom),
    blk: usize,
    act: &[u8],
    Layout { arb, tq, .. }: Layout,
    t: usize,
    acc: &mut [Acc],
) {
    let acc = &mut acc[..WIDE];
    assert!((blk + 1) * Q8_K_BLOCK <= tq && tq + 256 * (blk + 1) <= arb);
    assert!((t + WIDE) * arb <= act.len());
    let rows = &act[t * arb..(t + WIDE) * arb];
    // SAFETY: A reads 16 rows of 64 bytes at `rows[tq + 256·blk + 64k + j·arb]`, inside `rows`
    // (asserted above); each B read is 16 × 64 bytes of a 4 KiB operand; the four C tiles go
    // to the 1 KiB buffers of `c`. Tiles 0-7 are configured as A, B×3, C×4 (the caller's
    // contract).
    unsafe {
        asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
        for k in 0..4 {
            asm!(
                "tileloadd tmm0, [{a} + {sa} * 1]",
                "tileloadd tmm1, [{hh} + {s} * 1]",
                "tdpbssd tmm4, tmm0, tmm1",
                "tileloadd tmm2, [{lh} + {s} * 1]",
                "tdpbssd tmm5, tmm0, tmm2",
                "tileloadd tmm3, [{hl} + {s} * 1]",
                "tdpbssd tmm6, tmm0, tmm3",
                "tileloadd tmm1, [{ll} + {s} * 1]",
                "tdpbssd tmm7, tmm0, tmm1",
                a = in(reg) rows.as_ptr().add(tq + 256 * blk + 64 * k),
                sa = in(reg) arb,
                hh = in(reg) ops.hh[16 * k..].as_ptr(),
                lh = in(reg) ops.lh[16 * k..].as_ptr(),
                hl = in(reg) ops.hl[16 * k..].as_ptr(),
                ll = in(reg) ops.ll[16 * k..].as_ptr(),
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s} * 1], tmm4",
            "tilestored [{c1} + {s} * 1], tmm5",
            "tilestored [{c2} + {s} * 1], tmm6",
            "tilestored [{c3} + {s} * 1], tmm7",
            c0 = in(reg) c[0].0.as_mut_ptr(),
            c1 = in(reg) c[1].0.as_mut_ptr(),
            c2 = in(reg) c[2].0.as_mut_ptr(),
            c3 = in(reg) c[3].0.as_mut_ptr(),
            s = in(reg) 64usize,
            options(nostack),
        );
    }
    let d = ld_ps(&p.d);
    let yd = rows[blk * Q8_K_BLOCK..].as_ptr();
    for (j, acc) in acc.iter_mut().enumerate() {
        // SAFETY: row j's block scale lies inside `rows` (asserted above); the C rows are 16
        // readable i32 each; no alignment needed.
        let (dy, hh, lh, hl, ll) = unsafe {
            (
                yd.add(j * arb).cast::<f32>().read_unaligned(),
                _mm512_loadu_si512(c[0].0[j].as_ptr().cast()),
                _mm512_loadu_si512(c[1].0[j].as_ptr().cast()),
                _mm512_loadu_si512(c[2].0[j].as_ptr().cast()),
                _mm512_loadu_si512(c[3].0[j].as_ptr().cast()),
            )
        };
        let sumi = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_slli_epi32::<7>(hh), _mm512_slli_epi32::<4>(lh)),
            _mm512_add_epi32(_mm512_slli_epi32::<3>(hl), ll),
        );
        let dd = _mm512_mul_ps(d, _mm512_set1_ps(dy));
        let a0 = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi), ld_ps(&acc[0]));
        st_ps(&mut acc[0], a0);
    }
}
