//! q8 products on Intel AMX (advanced matrix extensions): one `tdpbsud` multiplies a tile of up
//! to 16 rows × 32 int8 activations by one block of a q8 panel (32 columns × 16 weight rows)
//! into 16 × 16 int32 sums, 8192 multiply–adds, where `vpdpbusd` does 64. The panels' groups of
//! 4 columns × 16 rows (64 bytes, see `Data::Q8`) are already the layout the instruction reads.
//! Each block's sums are then scaled and added in f32 exactly as the VNNI kernel does, so the
//! results are bit-identical to it and to the portable loop.

use super::avx512::store;
use super::{Data, LANES, Matrix, Q8_BLOCK, QuantView};
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether this CPU has AMX-INT8 and the OS lets this process use the tile registers (asked once).
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let edx = if __get_cpuid_max(0).0 >= 7 { __cpuid_count(7, 0).edx } else { 0 };
        let (tile, int8) = (edx >> 24 & 1 == 1, edx >> 25 & 1 == 1);
        // the kernel scales the sums with AVX-512 (a VM may show AMX but hide AVX-512)
        tile && int8 && std::arch::is_x86_feature_detected!("avx512f") && request_tile_data()
    })
}

/// Linux hands out the tile registers' 8 KiB of state only to processes that ask for it.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile registers carry state from one `asm!` block to the next (the -128 tile, a block's
/// sums until they are stored). The blocks that write them declare them clobbered; nothing else
/// here touches them, since the compiler never emits AMX instructions of its own.
///
/// The `ldtilecfg` operand: tmm0, tmm1 int32 sums [m, 16]; tmm2, tmm3 activations [m, 32 bytes];
/// tmm4, tmm5 one block of a panel: 8 groups of 4 columns × 16 rows; tmm6 the same shape, all
/// -128. Blocks alternate between the sets (0, 2, 4) and (1, 3, 5), so one block's product runs
/// while the previous one is scaled.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new(m: usize) -> Self {
        let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        let tiles = [
            (64, m),
            (64, m),
            (Q8_BLOCK, m),
            (Q8_BLOCK, m),
            (64, Q8_BLOCK / 4),
            (64, Q8_BLOCK / 4),
            (64, Q8_BLOCK / 4),
        ];
        for (t, (colsb, rows)) in tiles.into_iter().enumerate() {
            (c.colsb[t], c.rows[t]) = (colsb as u16, rows as u8);
        }
        c
    }
}

/// The tile that cancels the weights' +128: one block of -128s.
static MINUS_128: [i8; Q8_BLOCK * LANES] = [-128; Q8_BLOCK * LANES];

/// Input rows per tile: 16 or 8. With 4, AMX was slower than the VNNI kernel (a warm matrix of
/// small-zh's q, k, v shape: 171 against 215 GMAC/s on one thread; at 8 rows 261 against 185).
pub(super) const MIN_ROWS: usize = 8;

/// q8 product for the rows n of panels p0..p1 and input rows 0..nr (nr a multiple of 8), in
/// tiles of 1 panel × 16 or 8 rows.
/// # Safety
/// [`available`] returned true; as `super::q8_panels`, with nr ≤ the rows quantized in `xq`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn q8_panels(out: *mut f32, xq: &QuantView, w: &Matrix, nr: usize, p0: usize, p1: usize) {
    debug_assert!(nr.is_multiple_of(MIN_ROWS));
    let mut b = 0;
    while b < nr {
        let r = if b + 16 <= nr { 16 } else { MIN_ROWS };
        // SAFETY: AMX is available; the tiles read rows b..b+r of xq and panels p0..p1.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &TileConfig::new(r), options(nostack, readonly));
            asm!(
                "tileloadd tmm6, [{p} + {s64}*1]",
                p = in(reg) MINUS_128.as_ptr(),
                s64 = in(reg) 64usize,
                out("tmm6") _,
                options(nostack, readonly),
            );
            for pn in p0..p1 {
                match r {
                    16 => q8_tile::<16>(out, xq, w, b, pn),
                    _ => q8_tile::<MIN_ROWS>(out, xq, w, b, pn),
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        b += r;
    }
}

/// out[b + r, pn * 16 + l] for r < R, l < 16, with tiles configured for R rows.
#[target_feature(enable = "avx512f")]
unsafe fn q8_tile<const R: usize>(out: *mut f32, xq: &QuantView, w: &Matrix, b: usize, pn: usize) {
    let Data::Q8 { q, scales } = &w.data else { unreachable!("q8 weights") };
    let nbk = w.cols.div_ceil(Q8_BLOCK);
    let kp = nbk * Q8_BLOCK;
    debug_assert!(xq.scale.len() >= (b + R) * nbk && scales.len() >= (pn + 1) * nbk * LANES);
    let mut acc = [[_mm512_setzero_ps(); R]];
    let mut sums = [[[0i32; LANES]; R]; 2];
    // SAFETY: panel pn holds kp columns of 16 lanes and nbk scales of 16 lanes; xq holds rows
    // b..b+R of kp values and nbk scales.
    unsafe {
        let tiles = Tiles { x: xq.q.as_ptr().add(b * kp), kp, w: q.as_ptr().add(pn * kp * LANES) };
        let (dw, dx) = (scales.as_ptr().add(pn * nbk * LANES), xq.scale.as_ptr().add(b * nbk));
        tiles.multiply::<0>(0);
        for blk in (0..nbk).step_by(2) {
            if blk + 1 < nbk {
                tiles.multiply::<1>(blk + 1);
            }
            Tiles::sums::<0, R>(&mut sums[0]);
            add_scaled(&mut acc[0], &sums[0], dw.add(blk * LANES), dx.add(blk), nbk);
            if blk + 1 < nbk {
                if blk + 2 < nbk {
                    tiles.multiply::<0>(blk + 2);
                }
                Tiles::sums::<1, R>(&mut sums[1]);
                add_scaled(&mut acc[0], &sums[1], dw.add((blk + 1) * LANES), dx.add(blk + 1), nbk);
            }
        }
        store::<1, R>(out, &acc, w.rows, b, pn);
    }
}

/// acc[r] += sums[r] · (dw · dx[r · stride]), in the VNNI kernel's order of operations.
/// # Safety
/// dw: 16 values, dx: (R − 1) · stride + 1 values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_scaled<const R: usize>(
    acc: &mut [__m512; R],
    sums: &[[i32; LANES]; R],
    dw: *const f32,
    dx: *const f32,
    stride: usize,
) {
    // SAFETY: as documented.
    unsafe {
        let dw = _mm512_loadu_ps(dw);
        for (r, (a, s)) in acc.iter_mut().zip(sums).enumerate() {
            let s_dx = _mm512_mul_ps(dw, _mm512_set1_ps(*dx.add(r * stride)));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(s.as_ptr().cast())), s_dx, *a);
        }
    }
}

/// Blocks ahead of the current one whose weights are prefetched (past the panel's end: the next
/// panel's, which follows it in memory).
const AHEAD: usize = 16;

/// Where one tile of rows reads its operands.
struct Tiles {
    x: *const i8,
    kp: usize,
    w: *const u8,
}

impl Tiles {
    /// Tile set S (0 or 1): block `blk`'s sums Σ x·(w + 128) − 128·Σ x = Σ x·w (the second term
    /// from the -128 tile; the order of exact int32 additions does not matter).
    /// SAFETY: tiles configured; block blk < nbk of each operand.
    #[inline(always)]
    unsafe fn multiply<const S: usize>(&self, blk: usize) {
        // SAFETY: as documented; tile loads read the configured rows at the given strides.
        unsafe {
            asm!(
                "tilezero tmm{c}",
                "tileloadd tmm{a}, [{x} + {kp}*1]",
                "tileloadd tmm{w}, [{wp} + {s64}*1]",
                "tdpbsud tmm{c}, tmm{a}, tmm{w}",
                "tdpbssd tmm{c}, tmm{a}, tmm6",
                c = const S,
                a = const 2 + S,
                w = const 4 + S,
                x = in(reg) self.x.add(blk * Q8_BLOCK),
                kp = in(reg) self.kp,
                wp = in(reg) self.w.add(blk * Q8_BLOCK * LANES),
                s64 = in(reg) 64usize,
                out("tmm0") _,
                out("tmm1") _,
                out("tmm2") _,
                out("tmm3") _,
                out("tmm4") _,
                out("tmm5") _,
                options(nostack, readonly),
            );
            let ahead = self.w.wrapping_add((blk + AHEAD) * Q8_BLOCK * LANES);
            for line in 0..Q8_BLOCK * LANES / 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64).cast());
            }
        }
    }

    /// Stores tile set S's int32 sums (the rows configured).
    /// SAFETY: tiles configured with at most R rows.
    #[inline(always)]
    unsafe fn sums<const S: usize, const R: usize>(sums: &mut [[i32; LANES]; R]) {
        // SAFETY: as documented: R rows of 64 bytes.
        unsafe {
            asm!(
                "tilestored [{p} + {s64}*1], tmm{c}",
                c = const S,
                p = in(reg) sums.as_mut_ptr(),
                s64 = in(reg) 64usize,
                options(nostack),
            );
        }
    }
}
