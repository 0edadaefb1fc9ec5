//! Inference kernels: weight matrices in f32 or q8_0 stored in panels of 16 rows, batched
//! matrix–vector products threaded over panels (also used for prefill), RMSNorm, RoPE and attention
//! over a KV cache.
//!
//! The batched product computes every output element by the same operations in the same order
//! whatever the number of rows in the batch, so a sequence decoded alone or inside a batch gets
//! bit-identical logits.

use crate::model::aligned::{Aligned, Part, cast_mut};
use crate::model::kernels::rmsnorm::{row_rstd, scale_row};
use crate::model::kernels::{SharedMut, exp};
use half::f16;
use std::borrow::Cow;
use std::sync::Arc;

/// q8_0 block length: each run of 32 weights of a row shares one f32 scale.
pub const Q8_BLOCK: usize = 32;

/// How weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F32,
    /// Int8 with one f32 scale per block of 32 (like llama.cpp's q8_0); products quantize the
    /// activations the same way and multiply int8 by int8, as llama.cpp does.
    Q8,
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Quant::F32),
            "q8" | "q8_0" => Ok(Quant::Q8),
            _ => Err(format!("unknown weight format `{s}`; use f32 or q8")),
        }
    }
}

/// Weight rows per panel: one AVX-512 register of outputs.
const LANES: usize = 16;

/// Weights stored in panels of 16 rows (rows padded with zeros to a multiple of 16). One pass over
/// a panel broadcasts input values against 16 rows' weights and accumulates 16 outputs in one
/// register, so no horizontal sums are needed and the same loads serve every input row. The
/// parts live in one buffer shared by all matrices packed together ([`Matrix::pack_all`]).
enum Data {
    /// Column by column: element (n, j) at `((n / 16) * k + j) * 16 + n % 16`.
    F32(Part<f32>),
    /// `q`: the int8 value + 128 (so unsigned, the operand type of the int8 dot-product
    /// instruction), over `k` padded to whole blocks, in groups of 4 columns: element (n, j) at
    /// `((n / 16) * kp + j / 4 * 4) * 16 + (n % 16) * 4 + j % 4`; each 64-byte group holds 4
    /// consecutive weights of 16 rows. `scales`: one f32 per (row, block), `[panel, block, 16]`.
    Q8 { q: Part<u8>, scales: Part<f32> },
}

/// A weight matrix W: [rows, cols] (PyTorch `[out, in]`), applied as y = x @ W^T.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

/// Index of q8 weight (row `n`, column `j`) in `Data::Q8::q`; `kp`: columns padded to whole blocks.
fn q8_index(n: usize, j: usize, kp: usize) -> usize {
    ((n / LANES) * kp + j / 4 * 4) * LANES + (n % LANES) * 4 + j % 4
}

/// Each block's q8_0 scale d = amax / 127 and int8 values v · (1/d) rounded to nearest (ties to
/// even), the last block zero-padded. x: [k] -> q: [nbk * 32], scale, sum: [nbk] (the sum of
/// each block's int8 values).
fn quantize_row(x: &[f32], q: &mut [i8], scale: &mut [f32], sum: &mut [i32]) {
    assert!(q.len() == scale.len() * Q8_BLOCK && x.len().div_ceil(Q8_BLOCK) == scale.len() && sum.len() == scale.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the lengths are as documented.
        return unsafe { avx512::quantize_row(x, q, scale, sum) };
    }
    quantize_row_portable(x, q, scale, sum)
}

fn quantize_row_portable(x: &[f32], q: &mut [i8], scale: &mut [f32], sum: &mut [i32]) {
    let blocks = x.chunks(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK));
    for ((v, q), (d, s)) in blocks.zip(scale.iter_mut().zip(sum)) {
        let mut pad = [0f32; Q8_BLOCK];
        pad[..v.len()].copy_from_slice(v);
        (*d, *s) = quantize_block_portable(&pad, q.try_into().expect("whole blocks"));
    }
}

/// The q8 scale of a vector (its largest |value| / 127) and its inverse (see [`inverse_scale`]).
pub(crate) fn q8_scale(x: &[f32]) -> (f32, f32) {
    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    (d, inverse_scale(d))
}

/// 1/d, or 0 for a zero scale or one so small (amax below ~1e-36) that 1/d overflows: such a
/// block quantizes to zeros.
fn inverse_scale(d: f32) -> f32 {
    let inv = 1.0 / d;
    if d > 0.0 && inv.is_finite() { inv } else { 0.0 }
}

#[allow(clippy::manual_clamp)] // clamp keeps NaN; max/min match the vector path
fn quantize_block_portable(x: &[f32; Q8_BLOCK], q: &mut [i8; Q8_BLOCK]) -> (f32, i32) {
    let (d, inv) = q8_scale(x);
    for (q, v) in q.iter_mut().zip(x.iter()) {
        // max/min (not clamp) send NaN to -127 as the vector instructions do; then v + 1.5·2^23
        // rounds v to an integer in the low bits: its low byte is v as an i8.
        *q = ((v * inv).max(-127.0).min(127.0) + 12_582_912.0).to_bits() as u8 as i8;
    }
    (d, q.iter().map(|&v| v as i32).sum())
}

impl Matrix {
    /// w: [rows, cols] row-major.
    pub fn new(w: &[f32], rows: usize, cols: usize, quant: Quant) -> Self {
        let mut m = Self::pack_all(quant, &[(rows, cols)], |_| Cow::Borrowed(w));
        m.pop().expect("one matrix")
    }

    /// Packs matrices of the given shapes `(rows, cols)` into one buffer, so that a model's
    /// weights are one mapping (on huge pages where the OS grants them; see `aligned`).
    /// `weights(i)`: matrix i, [rows, cols] row-major, asked for once each, in order.
    pub fn pack_all<'a>(
        quant: Quant,
        shapes: &[(usize, usize)],
        weights: impl Fn(usize) -> Cow<'a, [f32]>,
    ) -> Vec<Self> {
        let layouts: Vec<_> = shapes.iter().map(|&(rows, cols)| Layout { rows, cols, quant }).collect();
        let mut total = 0;
        let starts: Vec<usize> = layouts
            .iter()
            .map(|l| {
                total += l.bytes();
                total - l.bytes()
            })
            .collect();
        let mut buf = Aligned::<u8>::zeroed(total);
        for (i, (l, &start)) in layouts.iter().zip(&starts).enumerate() {
            let w = weights(i);
            assert_eq!(w.len(), l.rows * l.cols, "matrix {i}: {} values for {} x {}", w.len(), l.rows, l.cols);
            l.pack(&w, &mut buf, start);
        }
        let buf = Arc::new(buf);
        let parts = layouts.iter().zip(starts).map(|(l, start)| {
            let data = match quant {
                Quant::F32 => Data::F32(Part::new(buf.clone(), start, l.values())),
                Quant::Q8 => Data::Q8 {
                    q: Part::new(buf.clone(), start, l.values()),
                    scales: Part::new(buf.clone(), start + l.first_part(), l.scales()),
                },
            };
            Matrix { rows: l.rows, cols: l.cols, data }
        });
        parts.collect()
    }

    /// Bytes read from memory by one pass over the weights.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(w) => w.len() * 4,
            Data::Q8 { q, scales } => q.len() + scales.len() * 4,
        }
    }

    /// Row `r` as f32 (dequantized for q8).
    #[cfg(test)]
    fn row(&self, r: usize, out: &mut [f32]) {
        let (pn, lane, k) = (r / LANES, r % LANES, self.cols);
        match &self.data {
            Data::F32(w) => out.iter_mut().enumerate().for_each(|(j, o)| *o = w[(pn * k + j) * LANES + lane]),
            Data::Q8 { q, scales } => {
                let nbk = k.div_ceil(Q8_BLOCK);
                for (j, o) in out.iter_mut().enumerate() {
                    let s = scales[(pn * nbk + j / Q8_BLOCK) * LANES + lane];
                    *o = (q[q8_index(r, j, nbk * Q8_BLOCK)] as i32 - 128) as f32 * s;
                }
            }
        }
    }
}

/// Where a matrix's parts lie in a packed buffer: its weights (f32, or q8 values), then for q8
/// its scales, each part starting on a cache line.
struct Layout {
    rows: usize,
    cols: usize,
    quant: Quant,
}

impl Layout {
    fn panels(&self) -> usize {
        self.rows.div_ceil(LANES)
    }

    fn blocks(&self) -> usize {
        self.cols.div_ceil(Q8_BLOCK)
    }

    /// Weights stored: f32 values, or q8 bytes over whole blocks.
    fn values(&self) -> usize {
        match self.quant {
            Quant::F32 => self.panels() * self.cols * LANES,
            Quant::Q8 => self.panels() * self.blocks() * Q8_BLOCK * LANES,
        }
    }

    /// q8 scales: one per (row, block).
    fn scales(&self) -> usize {
        self.panels() * self.blocks() * LANES
    }

    /// Bytes of the weights part, rounded up to a cache line.
    fn first_part(&self) -> usize {
        let elem = if self.quant == Quant::F32 { 4 } else { 1 };
        (self.values() * elem).next_multiple_of(64)
    }

    fn bytes(&self) -> usize {
        self.first_part() + if self.quant == Quant::Q8 { (self.scales() * 4).next_multiple_of(64) } else { 0 }
    }

    /// Writes w ([rows, cols] row-major) in this layout at byte `at` of `buf` (zeroed).
    fn pack(&self, w: &[f32], buf: &mut [u8], at: usize) {
        let (cols, kp) = (self.cols, self.blocks() * Q8_BLOCK);
        match self.quant {
            Quant::F32 => {
                let p = cast_mut::<f32>(buf, at, self.values());
                for (n, row) in w.chunks_exact(cols).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        p[((n / LANES) * cols + j) * LANES + n % LANES] = v;
                    }
                }
            }
            Quant::Q8 => {
                let (qb, sb) = buf[at..at + self.bytes()].split_at_mut(self.first_part());
                let q = cast_mut::<u8>(qb, 0, self.values());
                let scales = cast_mut::<f32>(sb, 0, self.scales());
                q.fill(128);
                let nbk = self.blocks();
                let (mut qr, mut dr, mut sr) = (vec![0i8; kp], vec![0f32; nbk], vec![0i32; nbk]);
                for (n, row) in w.chunks_exact(cols).enumerate() {
                    quantize_row(row, &mut qr, &mut dr, &mut sr);
                    for (j, &v) in qr[..cols].iter().enumerate() {
                        q[q8_index(n, j, kp)] = (v as i16 + 128) as u8;
                    }
                    for (b, &d) in dr.iter().enumerate() {
                        scales[((n / LANES) * nbk + b) * LANES + n % LANES] = d;
                    }
                }
            }
        }
    }
}

/// Rows of activations quantized like q8 weights for an int8 product: per block of 32 a scale
/// and int8 values (`q`: [nb, kp], zero-padded), plus each block's sum of values, which removes
/// the weights' +128 offset: Σ (w + 128)·x = Σ w·x + 128·Σ x.
#[derive(Default)]
pub(crate) struct QuantRows {
    q: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<i32>,
    /// Values per row before padding.
    k: usize,
}

impl QuantRows {
    /// Buffers for up to `rows` rows of up to `k` values: quantizing into them later allocates
    /// and clears nothing.
    pub(crate) fn new(rows: usize, k: usize) -> Self {
        let mut xq = QuantRows::default();
        xq.rows(rows, k);
        xq
    }

    /// x: [nb, k].
    #[cfg(test)]
    fn quantize(&mut self, x: &[f32], nb: usize, k: usize) {
        let rows = self.rows(nb, k);
        for (b, xr) in x.chunks_exact(k).take(nb).enumerate() {
            // SAFETY: b < nb, on this thread alone.
            unsafe { rows.quantize(b, xr) };
        }
    }

    /// Lays out the buffers as `nb` rows of `k` values (growing them if they are too small; they
    /// never shrink, so a step that alternates widths does not clear them again each time) and
    /// returns a handle through which several threads quantize distinct rows at once.
    pub(crate) fn rows(&mut self, nb: usize, k: usize) -> QuantRowsMut<'_> {
        let nbk = k.div_ceil(Q8_BLOCK);
        if self.scale.len() < nb * nbk {
            self.q.resize(nb * nbk * Q8_BLOCK, 0);
            self.scale.resize(nb * nbk, 0.0);
            self.sum.resize(nb * nbk, 0);
        }
        self.k = k;
        QuantRowsMut {
            q: SharedMut::new(&mut self.q),
            scale: SharedMut::new(&mut self.scale),
            sum: SharedMut::new(&mut self.sum),
            k,
        }
    }

    /// For a team step (several threads quantizing and then reading the same rows): `nb` rows
    /// of up to `k` values.
    pub(crate) fn shared(&mut self, nb: usize, k: usize) -> SharedQuant<'_> {
        SharedQuant { widest: self.rows(nb, k), rows: nb }
    }

    /// The rows as the q8 kernels read them (laid out by the last [`rows`](Self::rows)).
    pub(crate) fn view(&self) -> QuantView<'_> {
        QuantView { q: &self.q, scale: &self.scale, sum: &self.sum }
    }

    /// Row `b` dequantized: [k].
    #[cfg(test)]
    fn row(&self, b: usize, k: usize) -> Vec<f32> {
        let nbk = k.div_ceil(Q8_BLOCK);
        (0..k).map(|j| self.q[b * nbk * Q8_BLOCK + j] as f32 * self.scale[b * nbk + j / Q8_BLOCK]).collect()
    }
}

/// Quantized rows as the q8 kernels read them: [`QuantRows`]' buffers, laid out for some width.
#[derive(Clone, Copy)]
pub(crate) struct QuantView<'a> {
    q: &'a [i8],
    scale: &'a [f32],
    sum: &'a [i32],
}

/// A [`QuantRows`] shared by the threads of a team step (see [`QuantRows::shared`]): each
/// quantizes its own rows, at any width up to the widest; between barriers, all read them.
#[derive(Clone, Copy)]
pub(crate) struct SharedQuant<'a> {
    /// The buffers, laid out for the widest rows the step quantizes.
    widest: QuantRowsMut<'a>,
    rows: usize,
}

impl<'a> SharedQuant<'a> {
    /// A handle to quantize rows of `k` values.
    pub(crate) fn rows(self, k: usize) -> QuantRowsMut<'a> {
        assert!(k <= self.widest.k, "rows of {k} values in buffers for {}", self.widest.k);
        QuantRowsMut { k, ..self.widest }
    }

    /// All rows, quantized for `k` values.
    /// # Safety
    /// No thread writes them meanwhile.
    pub(crate) unsafe fn view(self, k: usize) -> QuantView<'a> {
        let QuantRowsMut { q, scale, sum, .. } = self.rows(k);
        let nbk = k.div_ceil(Q8_BLOCK);
        // SAFETY: as documented; the buffers hold `rows` rows of the widest (>= k) values.
        unsafe {
            QuantView {
                q: q.read(0, self.rows * nbk * Q8_BLOCK),
                scale: scale.read(0, self.rows * nbk),
                sum: sum.read(0, self.rows * nbk),
            }
        }
    }
}

/// The rows of a [`QuantRows`] being written (see [`QuantRows::rows`]).
#[derive(Clone, Copy)]
pub(crate) struct QuantRowsMut<'a> {
    q: SharedMut<'a, i8>,
    scale: SharedMut<'a, f32>,
    sum: SharedMut<'a, i32>,
    k: usize,
}

impl QuantRowsMut<'_> {
    /// Quantizes row `b`: x: [k].
    /// # Safety
    /// `b` is below the rows the handle was made for, and no other thread writes row `b` meanwhile.
    pub(crate) unsafe fn quantize(&self, b: usize, x: &[f32]) {
        assert_eq!(x.len(), self.k, "a row of {} values for products of {}", x.len(), self.k);
        let nbk = self.k.div_ceil(Q8_BLOCK);
        // SAFETY: as documented: row b's elements, in the buffers, written by this thread alone.
        unsafe {
            quantize_row(
                x,
                self.q.slice(b * nbk * Q8_BLOCK, nbk * Q8_BLOCK),
                self.scale.slice(b * nbk, nbk),
                self.sum.slice(b * nbk, nbk),
            )
        }
    }
}

/// Below this many multiply–adds a product runs on the calling thread (a pool round trip costs more).
const PAR_MIN_MACS: usize = 1 << 16;

/// Batched matrix–vector product of f32 weights, threaded over panels of W's rows.
/// x: [nb, w.cols], out: [nb, w.rows]; out[b, n] = Σ_j W[n, j] · x[b, j], summed in order of j,
/// one fused multiply–add per term.
pub fn matmul(out: &mut [f32], x: &[f32], w: &Matrix, nb: usize) {
    assert!(matches!(w.data, Data::F32(_)), "matmul takes f32 weights; q8 ones go through matmul_quantized");
    assert!(x.len() >= nb * w.cols && out.len() >= nb * w.rows);
    for_panels(out, w, nb, |o, p0, p1| {
        // SAFETY: as documented on `for_panels`.
        unsafe { f32_panels(o, x, w, nb, p0, p1) }
    });
}

/// [`matmul`] of q8 weights by the first nb rows of `xq`, quantized per block of 32 as the
/// weights are: each block's exact int32 dot product, times both scales, is added in order of
/// blocks.
pub(crate) fn matmul_quantized(out: &mut [f32], xq: &QuantRows, w: &Matrix, nb: usize) {
    assert!(matches!(w.data, Data::Q8 { .. }), "matmul_quantized takes q8 weights");
    assert!(xq.k == w.cols && xq.scale.len() >= nb * w.cols.div_ceil(Q8_BLOCK) && out.len() >= nb * w.rows);
    let xq = xq.view();
    for_panels(out, w, nb, |o, p0, p1| {
        // SAFETY: as documented on `for_panels`.
        unsafe { q8_panels(o, &xq, w, nb, p0, p1) }
    });
}

/// Thread t's share (of nt) of a product in a team step: the columns of its range of W's panels,
/// for the nb rows of `out` ([nb, w.rows]), from the input rows `x` ([nb, w.cols]) for f32
/// weights, or for q8 weights from `xq` (nb rows quantized for w.cols values).
/// # Safety
/// `out` holds nb * w.rows floats; each of the nt threads passes its own t.
pub(crate) unsafe fn product_share(
    out: SharedMut<f32>,
    x: &[f32],
    xq: Option<QuantView>,
    w: &Matrix,
    nb: usize,
    (t, nt): (usize, usize),
) {
    let panels = w.rows.div_ceil(LANES);
    let (p0, p1) = (t * panels / nt, (t + 1) * panels / nt);
    // SAFETY: as documented: the threads' panel ranges are disjoint.
    unsafe {
        match (&w.data, xq) {
            (Data::F32(_), _) => {
                assert!(x.len() >= nb * w.cols);
                f32_panels(out, x, w, nb, p0, p1)
            }
            (Data::Q8 { .. }, Some(xq)) => {
                assert!(xq.scale.len() >= nb * w.cols.div_ceil(Q8_BLOCK));
                q8_panels(out, &xq, w, nb, p0, p1)
            }
            (Data::Q8 { .. }, None) => panic!("q8 weights multiply quantized rows"),
        }
    }
}

/// Runs `f(out, p0, p1)` over ranges of W's panels, threaded; each call alone writes columns
/// p0 * 16 .. p1 * 16 (within w.rows) of the nb rows of `out` ([nb, w.rows], checked by the caller).
fn for_panels(out: &mut [f32], w: &Matrix, nb: usize, f: impl Fn(SharedMut<f32>, usize, usize) + Sync) {
    let ptr = SharedMut::new(out);
    let panels = w.rows.div_ceil(LANES);
    let macs = nb * w.rows * w.cols;
    let pool = super::pool::pool();
    let nt = pool.threads();
    if pool.serial() || macs < PAR_MIN_MACS {
        f(ptr, 0, panels);
        return;
    }
    // A few chunks per thread so a preempted thread (shared machine) does not stall the rest.
    let chunk = panels.div_ceil(nt * 4).max(1);
    pool.run(panels.div_ceil(chunk), |c| {
        let p0 = c * chunk;
        f(ptr, p0, (p0 + chunk).min(panels));
    });
}

/// f32 product for the rows n of panels p0..p1, all b < nb.
/// SAFETY: `out` points to at least nb * w.rows floats; no other thread writes these columns;
/// x holds at least nb * w.cols values.
unsafe fn f32_panels(out: SharedMut<f32>, x: &[f32], w: &Matrix, nb: usize, p0: usize, p1: usize) {
    let Data::F32(wf) = &w.data else { unreachable!("f32 weights") };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; bounds as documented on the caller.
        unsafe { avx512::f32_panels(out.at(0), x, wf, w.rows, w.cols, nb, p0, p1) };
        return;
    }
    let k = w.cols;
    for pn in p0..p1 {
        let wp = &wf[pn * k * LANES..(pn + 1) * k * LANES];
        let lanes = LANES.min(w.rows - pn * LANES);
        for b in 0..nb {
            let mut acc = [0f32; LANES];
            for (xj, wj) in x[b * k..(b + 1) * k].iter().zip(wp.chunks_exact(LANES)) {
                acc.iter_mut().zip(wj).for_each(|(a, &w)| *a = w.mul_add(*xj, *a));
            }
            // SAFETY: b < nb and the panel's rows < w.rows; this caller owns these columns.
            unsafe { out.slice(b * w.rows + pn * LANES, lanes).copy_from_slice(&acc[..lanes]) };
        }
    }
}

/// q8 product for the rows n of panels p0..p1, all b < nb (the AVX512-VNNI kernel where the CPU
/// has it; the portable loop below computes bit-identical results).
/// SAFETY: `out` points to at least nb * w.rows floats; no other thread writes these columns;
/// `xq` holds nb rows quantized for w.cols columns.
unsafe fn q8_panels(out: SharedMut<f32>, xq: &QuantView, w: &Matrix, nb: usize, p0: usize, p1: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni") {
        // SAFETY: the CPU has AVX-512F and VNNI; bounds as documented on the caller.
        unsafe { avx512::q8_panels(out.at(0), xq, w, nb, p0, p1) };
        return;
    }
    // SAFETY: forwarded.
    unsafe { q8_panels_portable(out, xq, w, nb, p0, p1) }
}

/// SAFETY: as [`q8_panels`].
unsafe fn q8_panels_portable(out: SharedMut<f32>, xq: &QuantView, w: &Matrix, nb: usize, p0: usize, p1: usize) {
    let Data::Q8 { q, scales } = &w.data else { unreachable!("q8 weights") };
    let nbk = w.cols.div_ceil(Q8_BLOCK);
    let kp = nbk * Q8_BLOCK;
    for pn in p0..p1 {
        let lanes = LANES.min(w.rows - pn * LANES);
        for b in 0..nb {
            let mut acc = [0f32; LANES];
            for blk in 0..nbk {
                let mut isum = [0i32; LANES];
                for j in (blk * Q8_BLOCK..(blk + 1) * Q8_BLOCK).step_by(4) {
                    let xg = &xq.q[b * kp + j..][..4];
                    let wg = &q[(pn * kp + j) * LANES..][..4 * LANES];
                    for (s, wl) in isum.iter_mut().zip(wg.chunks_exact(4)) {
                        *s += wl.iter().zip(xg).map(|(&w, &x)| w as i32 * x as i32).sum::<i32>();
                    }
                }
                let (dx, corr) = (xq.scale[b * nbk + blk], 128 * xq.sum[b * nbk + blk]);
                let dw = &scales[(pn * nbk + blk) * LANES..][..LANES];
                for ((a, s), d) in acc.iter_mut().zip(isum).zip(dw) {
                    *a = ((s - corr) as f32).mul_add(d * dx, *a);
                }
            }
            // SAFETY: b < nb and the panel's rows < w.rows; this caller owns these columns.
            unsafe { out.slice(b * w.rows + pn * LANES, lanes).copy_from_slice(&acc[..lanes]) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Data, KEY_BLOCK, KvElem, LANES, Matrix, Q8_BLOCK, QuantView, amx};
    use std::arch::x86_64::*;
    use std::ops::Range;

    // key_scores holds a block of keys in two 16-wide vectors.
    const _: () = assert!(KEY_BLOCK == 32);

    /// Columns ahead of the current one whose f32 weights a tile of 8 or 16 rows prefetches (q8: 4× as
    /// many, the same bytes ahead): there the product is no longer bound by memory alone, and the
    /// hardware prefetcher alone leaves the weight stream stalled between bursts of arithmetic
    /// (measured: f32 +15–20% at 16 rows; q8 mostly helps batch 1).
    const PREFETCH: usize = 64;

    /// f32 product: output tiles of P panels (16·P weight rows) × R input rows; each weight vector
    /// loaded once per tile serves R rows; 4×4 tiles (2×8 from 8 rows: half the passes over each
    /// panel; 1×16 from 16 to 31) keep 16 accumulators in registers.
    /// wf: `Data::F32` panels of a [rows, k] matrix.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_panels(
        out: *mut f32,
        x: &[f32],
        wf: &[f32],
        rows: usize,
        k: usize,
        nb: usize,
        p0: usize,
        p1: usize,
    ) {
        // 16 to 31 rows: one pass of 16 over each panel reads the weights once, at an even pace
        // (with 2 × 8 tiles memory idled while the second 8 reused the panels from L1). With more
        // rows each panel is reused by several passes anyway, and 2 × 8 tiles need fewer loads
        // per multiply–add.
        let (pw, rw) = match nb {
            16..32 => (1, 16),
            8.. => (2, 8),
            _ => (4, 4),
        };
        tiles(pw, rw, p0, p1, 0..nb, |p, r, pn, b| {
            // SAFETY: panels pn..pn+p < p1, rows b..b+r < nb; the caller guarantees the buffers.
            unsafe {
                match p {
                    4 => f32_rows::<4>(r, out, x, wf, rows, k, b, pn),
                    2 => f32_rows::<2>(r, out, x, wf, rows, k, b, pn),
                    _ => f32_rows::<1>(r, out, x, wf, rows, k, b, pn),
                }
            }
        });
    }

    /// [`f32_tile`] for P panels × r rows, r one of 16 (P = 1 only), 8 (P < 4 only: 4 × 8 would
    /// not fit in registers), 4, 2, 1.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_rows<const P: usize>(
        r: usize,
        out: *mut f32,
        x: &[f32],
        wf: &[f32],
        rows: usize,
        k: usize,
        b: usize,
        pn: usize,
    ) {
        debug_assert!((r != 8 || P < 4) && (r != 16 || P == 1), "no 4 × 8 tile, 16 rows only in 1 panel");
        // SAFETY: forwarded from the caller.
        unsafe {
            match r {
                16 if P == 1 => f32_tile::<1, 16>(out, x, wf, rows, k, b, pn),
                8 if P < 4 => f32_tile::<P, 8>(out, x, wf, rows, k, b, pn),
                4 => f32_tile::<P, 4>(out, x, wf, rows, k, b, pn),
                2 => f32_tile::<P, 2>(out, x, wf, rows, k, b, pn),
                _ => f32_tile::<P, 1>(out, x, wf, rows, k, b, pn),
            }
        }
    }

    /// Covers panels p0..p1 × `rows` with tiles of pw (or 1) panels × rw rows (fewer at the
    /// end: the largest of rw/2, rw/4, …, 1 that fits): `f(panels, rows, first panel, first row)`.
    #[inline(always)]
    fn tiles(
        pw: usize,
        rw: usize,
        p0: usize,
        p1: usize,
        rows: Range<usize>,
        mut f: impl FnMut(usize, usize, usize, usize),
    ) {
        let nb = rows.end;
        let mut pn = p0;
        while pn < p1 {
            let p = if pn + pw <= p1 { pw } else { 1 };
            let mut b = rows.start;
            while b < nb {
                let mut r = rw;
                while b + r > nb {
                    r /= 2;
                }
                f(p, r, pn, b);
                b += r;
            }
            pn += p;
        }
    }

    /// Stores R rows × P panels of accumulators at out[b + r, (pn + i) * 16 + l], lanes past
    /// `rows` masked off.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store<const P: usize, const R: usize>(
        out: *mut f32,
        acc: &[[__m512; R]; P],
        rows: usize,
        b: usize,
        pn: usize,
    ) {
        for (i, acc) in acc.iter().enumerate() {
            let lanes = LANES.min(rows.saturating_sub((pn + i) * LANES));
            let m = ((1u32 << lanes) - 1) as __mmask16;
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: the caller sized `out` for rows b..b+R of `rows` columns; masked to `rows`.
                unsafe { _mm512_mask_storeu_ps(out.add((b + r) * rows + (pn + i) * LANES), m, *a) };
            }
        }
    }

    /// out[b + r, (pn + i) * 16 + l] for i < P, r < R, l < 16.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_tile<const P: usize, const R: usize>(
        out: *mut f32,
        x: &[f32],
        wf: &[f32],
        rows: usize,
        k: usize,
        b: usize,
        pn: usize,
    ) {
        let x = x[b * k..].as_ptr();
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        // SAFETY: panel pn + i holds k columns of 16 lanes; x holds R rows of k.
        unsafe {
            let wp = wf.as_ptr().add(pn * k * LANES);
            for j in 0..k {
                let xs: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*x.add(r * k + j)));
                for i in 0..P {
                    let wv = _mm512_loadu_ps(wp.add((i * k + j) * LANES));
                    if R >= 8 && b == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((i * k + j + PREFETCH) * LANES) as *const i8);
                    }
                    for r in 0..R {
                        acc[i][r] = _mm512_fmadd_ps(wv, xs[r], acc[i][r]);
                    }
                }
            }
            store(out, &acc, rows, b, pn);
        }
    }

    /// [`super::quantize_row`] with the same results ([`super::quantize_block_portable`]'s
    /// operations, 16 values at a time; the padding loaded as zeros under a mask).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [i8], scale: &mut [f32], sum: &mut [i32]) {
        let mask = |at: usize| -> __mmask16 {
            let n = x.len().saturating_sub(at);
            if n >= 16 { !0 } else { (1 << n) - 1 }
        };
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for (blk, (d, s)) in scale.iter_mut().zip(sum).enumerate() {
            let at = blk * Q8_BLOCK;
            // SAFETY: the masks cover only x's elements (the second half of a last block may lie
            // wholly past x's end, hence wrapping_add: its mask is then empty); q holds
            // scale.len() whole blocks.
            unsafe {
                let a = _mm512_maskz_loadu_ps(mask(at), x.as_ptr().add(at));
                let b = _mm512_maskz_loadu_ps(mask(at + 16), x.as_ptr().wrapping_add(at + 16));
                *d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 127.0;
                let inv = _mm512_set1_ps(super::inverse_scale(*d));
                // max returns its second operand for NaN (-127, as the portable path); converted
                // with the default rounding: to nearest, ties to even.
                let qa = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(a, inv), lo), hi));
                let qb = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(b, inv), lo), hi));
                _mm_storeu_si128(q.as_mut_ptr().add(at) as *mut __m128i, _mm512_cvtepi32_epi8(qa));
                _mm_storeu_si128(q.as_mut_ptr().add(at + 16) as *mut __m128i, _mm512_cvtepi32_epi8(qb));
                *s = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
            }
        }
    }

    /// q8 product with AVX512-VNNI: one `vpdpbusd` multiplies 4 consecutive unsigned weights of 16
    /// rows by 4 broadcast int8 activations and adds into 16 int32 sums (64 multiply–adds). Tiles
    /// of 3 panels × 4 rows hold 12 int32 block sums and 12 f32 accumulators in registers (31 of
    /// 32 with the weights and activations; measured +8% at 16 rows over 4 × 2, same at 1 row).
    ///
    /// The first pass of 4 rows over a panel group streams it from memory; the later passes find
    /// it in L1 or L2 and, meanwhile, bring the next group into L2, its panels spread over them
    /// (`ahead`: the panels a tile's pass brings), so that memory does not idle while they compute
    /// (measured: small-zh q8_0 ×1.05–1.08 at 16 sequences, ×1.11 at 8).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn q8_panels(out: *mut f32, xq: &QuantView, w: &Matrix, nb: usize, p0: usize, p1: usize) {
        // With AMX, whole groups of 8 rows go to its tiles, the rest (fewer than 8) to these.
        let nr = if amx::available() { nb / amx::MIN_ROWS * amx::MIN_ROWS } else { 0 };
        if nr > 0 {
            // SAFETY: AMX is available; bounds forwarded.
            unsafe { amx::q8_panels(out, xq, w, nr, p0, p1) };
        }
        let later = (nb / 4).saturating_sub(1); // passes of 4 rows after the first
        tiles(3, 4, p0, p1, nr..nb, |p, r, pn, b| {
            // Bit i: this pass brings panel i of the next group (within p1) into L2. A later
            // pass of 4 rows means nb >= 8, so `later` >= 1.
            let ahead = if r == 4 && b > 0 {
                (0..p).filter(|&i| i % later == b / 4 - 1 && pn + p + i < p1).fold(0, |m, i| m | 1 << i)
            } else {
                0
            };
            // SAFETY: panels pn..pn+p < p1, rows b..b+r < nb; the caller guarantees the buffers.
            unsafe {
                match (p, r) {
                    (3, 4) => q8_tile::<3, 4>(out, xq, w, b, pn, ahead),
                    (3, 2) => q8_tile::<3, 2>(out, xq, w, b, pn, ahead),
                    (3, _) => q8_tile::<3, 1>(out, xq, w, b, pn, ahead),
                    (_, 4) => q8_tile::<1, 4>(out, xq, w, b, pn, ahead),
                    (_, 2) => q8_tile::<1, 2>(out, xq, w, b, pn, ahead),
                    _ => q8_tile::<1, 1>(out, xq, w, b, pn, ahead),
                }
            }
        });
    }

    /// out[b + r, (pn + i) * 16 + l] for i < P, r < R, l < 16: per block, the int32 sums of
    /// (w + 128)·x, less 128·Σx, times the weight scales and the row's activation scale. Bit i
    /// of `ahead`: also prefetch panel pn + P + i into L2.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn q8_tile<const P: usize, const R: usize>(
        out: *mut f32,
        xq: &QuantView,
        w: &Matrix,
        b: usize,
        pn: usize,
        ahead: u32,
    ) {
        let Data::Q8 { q, scales } = &w.data else { unreachable!("q8 weights") };
        let nbk = w.cols.div_ceil(Q8_BLOCK);
        let kp = nbk * Q8_BLOCK;
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        // SAFETY: panel pn + i holds kp columns of 16 lanes and nbk scales of 16 lanes; xq holds
        // rows b..b+R of kp values and nbk scales and sums.
        unsafe {
            let (qp, sp) = (q.as_ptr().add(pn * kp * LANES), scales.as_ptr().add(pn * nbk * LANES));
            let xp = xq.q.as_ptr().add(b * kp);
            for blk in 0..nbk {
                // Each sum starts at -128·Σx, which cancels the weights' +128 offset.
                let start: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_set1_epi32(-128 * xq.sum[(b + r) * nbk + blk]));
                let mut isum = [start; P];
                for j in (blk * Q8_BLOCK..(blk + 1) * Q8_BLOCK).step_by(4) {
                    let xs: [__m512i; R] =
                        std::array::from_fn(|r| _mm512_set1_epi32((xp.add(r * kp + j) as *const i32).read_unaligned()));
                    for i in 0..P {
                        let wv = _mm512_loadu_si512(qp.add((i * kp + j) * LANES) as *const __m512i);
                        if b == 0 {
                            _mm_prefetch::<_MM_HINT_T0>(
                                qp.wrapping_add((i * kp + j + 4 * PREFETCH) * LANES) as *const i8
                            );
                        } else if ahead >> i & 1 != 0 {
                            _mm_prefetch::<_MM_HINT_T1>(qp.wrapping_add(((P + i) * kp + j) * LANES) as *const i8);
                        }
                        for r in 0..R {
                            isum[i][r] = _mm512_dpbusd_epi32(isum[i][r], wv, xs[r]);
                        }
                    }
                }
                for r in 0..R {
                    let at = (b + r) * nbk + blk;
                    let dx = _mm512_set1_ps(xq.scale[at]);
                    for i in 0..P {
                        let s = _mm512_mul_ps(_mm512_loadu_ps(sp.add((i * nbk + blk) * LANES)), dx);
                        let v = _mm512_cvtepi32_ps(isum[i][r]);
                        acc[i][r] = _mm512_fmadd_ps(v, s, acc[i][r]);
                    }
                }
            }
            store(out, &acc, w.rows, b, pn);
        }
    }

    /// [`super::key_scores`] with 16-wide vectors: a block of 32 keys is two vectors per head.
    /// # Safety
    /// AVX-512F; keys: [hd, KEY_BLOCK] (hd = keys.len() / KEY_BLOCK), q: >= H·hd values, scores:
    /// >= (H − 1)·ss + KEY_BLOCK.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn key_scores<T: KvElem, const H: usize, const U: usize>(
        scores: &mut [f32],
        ss: usize,
        q: &[f32],
        keys: &[T],
        scale: f32,
    ) {
        let hd = keys.len() / KEY_BLOCK;
        let (kp, qp) = (keys.as_ptr(), q.as_ptr());
        let mut acc = [[[_mm512_setzero_ps(); 2]; H]; U];
        let whole = hd / U * U;
        // SAFETY (all loads): d < hd, so key rows d·KEY_BLOCK..+32 and q[h·hd + d] are in bounds.
        unsafe {
            for d0 in (0..whole).step_by(U) {
                for u in 0..U {
                    let k = kp.add((d0 + u) * KEY_BLOCK);
                    let (k0, k1) = (T::load16(k), T::load16(k.add(16)));
                    for h in 0..H {
                        let qv = _mm512_set1_ps(*qp.add(h * hd + d0 + u));
                        acc[u][h][0] = _mm512_fmadd_ps(qv, k0, acc[u][h][0]);
                        acc[u][h][1] = _mm512_fmadd_ps(qv, k1, acc[u][h][1]);
                    }
                }
            }
            for d in whole..hd {
                let k = kp.add(d * KEY_BLOCK);
                let (k0, k1) = (T::load16(k), T::load16(k.add(16)));
                for h in 0..H {
                    let qv = _mm512_set1_ps(*qp.add(h * hd + d));
                    acc[0][h][0] = _mm512_fmadd_ps(qv, k0, acc[0][h][0]);
                    acc[0][h][1] = _mm512_fmadd_ps(qv, k1, acc[0][h][1]);
                }
            }
            let sc = _mm512_set1_ps(scale);
            for h in 0..H {
                for half in 0..2 {
                    let mut sum = acc[0][h][half];
                    for a in &acc[1..] {
                        sum = _mm512_add_ps(sum, a[h][half]);
                    }
                    _mm512_storeu_ps(scores.as_mut_ptr().add(h * ss + half * 16), _mm512_mul_ps(sum, sc));
                }
            }
        }
    }

    /// [`super::weighted_sum`] with 16-wide vectors: a value row is HD / 16 vectors.
    /// # Safety
    /// AVX-512F; HD a multiple of 16, at most 128; v: >= n·HD, p: >= (H − 1)·ss + n, out: >= H·HD.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum<T: KvElem, const H: usize, const HD: usize, const U: usize>(
        out: &mut [f32],
        p: &[f32],
        ss: usize,
        v: &[T],
        n: usize,
    ) {
        let nv = HD / 16;
        let (vp, pp) = (v.as_ptr(), p.as_ptr());
        let mut acc = [[[_mm512_setzero_ps(); 8]; H]; U];
        let whole = n / U * U;
        // SAFETY (all loads): t < n, so value row t and p[h·ss + t] are in bounds.
        unsafe {
            for t0 in (0..whole).step_by(U) {
                for u in 0..U {
                    let row = vp.add((t0 + u) * HD);
                    for h in 0..H {
                        let pv = _mm512_set1_ps(*pp.add(h * ss + t0 + u));
                        for i in 0..nv {
                            acc[u][h][i] = _mm512_fmadd_ps(pv, T::load16(row.add(i * 16)), acc[u][h][i]);
                        }
                    }
                }
            }
            for t in whole..n {
                let row = vp.add(t * HD);
                for h in 0..H {
                    let pv = _mm512_set1_ps(*pp.add(h * ss + t));
                    for i in 0..nv {
                        acc[0][h][i] = _mm512_fmadd_ps(pv, T::load16(row.add(i * 16)), acc[0][h][i]);
                    }
                }
            }
            for h in 0..H {
                for i in 0..nv {
                    let mut sum = acc[0][h][i];
                    for a in &acc[1..] {
                        sum = _mm512_add_ps(sum, a[h][i]);
                    }
                    _mm512_storeu_ps(out.as_mut_ptr().add(h * HD + i * 16), sum);
                }
            }
        }
    }
}

/// RMSNorm of each row. x: [N, C], w: [C] -> out: [N, C].
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (o, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        scale_row(o, xr, w, row_rstd(xr, eps));
    }
}

/// Rotate-half RoPE (HF convention) of every head in `x`: [n_heads * hd], pairs (i, i + hd/2).
/// cos, sin: [hd/2] for this position.
pub fn rope(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for h in x.chunks_exact_mut(hd) {
        let (a, b) = h.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// Positions per block of scores: transposed keys are stored with a row stride that is a multiple
/// of this, so every block is whole (scores past `n` are computed and ignored).
pub const KEY_BLOCK: usize = 32;

/// An element of a KV cache as stored: f32, f16, or i8 (q8, scaled per position).
pub(crate) trait KvElem: Copy + Send + Sync {
    /// Exact (f16 → f32 widening loses nothing); in vector loops F16C widens 16 at a time (the
    /// build targets the native CPU, `.cargo/config.toml`; without F16C enabled at compile time
    /// `half` converts one value at a time).
    fn to_f32(self) -> f32;
    /// 16 values from `p`, widened to f32 as `to_f32` does.
    /// # Safety
    /// `p` points to 16 readable values; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: as documented on the trait.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl KvElem for i8 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const i8) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: as documented on the trait.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
}

impl KvElem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: as documented on the trait.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// The `g` query heads that share one KV head (grouped-query attention) attend over its first
/// `n` positions; each key is loaded once for up to 4 of them.
/// q: [g, hd]; kb: the head's keys in blocks, [blocks, hd, KEY_BLOCK] (key t, dim d at
/// `((t / KEY_BLOCK) * hd + d) * KEY_BLOCK + t % KEY_BLOCK`), at least n keys; v: its values,
/// [>= n, hd]; scores: [g, ss] scratch (ss >= n rounded up to KEY_BLOCK); out: [g, hd].
/// f16 keys and values are widened in registers as they are loaded. `scales` (q8 caches: int8
/// keys and values with one scale per position, keys' and values', [>= n] each): each raw score
/// is multiplied by its key's scale, each softmax weight by its value's scale.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<T: KvElem>(
    out: &mut [f32],
    scores: &mut [f32],
    ss: usize,
    q: &[f32],
    kb: &[T],
    v: &[T],
    hd: usize,
    n: usize,
    scales: Option<(&[f32], &[f32])>,
) {
    let g = q.len() / hd;
    assert!(
        kb.len() >= n.div_ceil(KEY_BLOCK) * hd * KEY_BLOCK && v.len() >= n * hd,
        "attention over {n} positions needs whole key blocks and {n} value rows"
    );
    assert!(ss >= n.next_multiple_of(KEY_BLOCK) && scores.len() >= g * ss && out.len() >= g * hd);
    assert!(scales.is_none_or(|(ks, vs)| ks.len() >= n && vs.len() >= n), "a scale per position");
    let scale = 1.0 / (hd as f32).sqrt();
    for (blk, keys) in kb.chunks_exact(hd * KEY_BLOCK).take(n.div_ceil(KEY_BLOCK)).enumerate() {
        for h0 in (0..g).step_by(4) {
            let (sc, q) = (&mut scores[h0 * ss + blk * KEY_BLOCK..], &q[h0 * hd..]);
            match (g - h0).min(4) {
                4 => key_scores::<T, 4, 1>(sc, ss, q, keys, scale),
                3 => key_scores::<T, 3, 2>(sc, ss, q, keys, scale),
                2 => key_scores::<T, 2, 2>(sc, ss, q, keys, scale),
                _ => key_scores::<T, 1, 4>(sc, ss, q, keys, scale),
            }
        }
    }
    for sc in scores.chunks_mut(ss).take(g) {
        if let Some((ks, _)) = scales {
            sc[..n].iter_mut().zip(ks).for_each(|(s, k)| *s *= k);
        }
        softmax_padded(sc, n); // the scores are already scaled by 1/√hd
        if let Some((_, vs)) = scales {
            sc[..n].iter_mut().zip(vs).for_each(|(s, v)| *s *= v);
        }
    }
    let most = if hd > 64 { 2 } else { 4 };
    let mut h0 = 0;
    while h0 < g {
        let step = [4, 2, 1].into_iter().find(|&s| s <= most && s <= g - h0).unwrap_or(1);
        let (o, sc) = (&mut out[h0 * hd..], &scores[h0 * ss..]);
        h0 += step;
        match (step, hd) {
            (4, 32) => weighted_sum::<T, 4, 32, 1>(o, sc, ss, v, n),
            (2, 32) => weighted_sum::<T, 2, 32, 2>(o, sc, ss, v, n),
            (1, 32) => weighted_sum::<T, 1, 32, 4>(o, sc, ss, v, n),
            (4, 48) => weighted_sum::<T, 4, 48, 1>(o, sc, ss, v, n),
            (2, 48) => weighted_sum::<T, 2, 48, 2>(o, sc, ss, v, n),
            (1, 48) => weighted_sum::<T, 1, 48, 4>(o, sc, ss, v, n),
            (4, 64) => weighted_sum::<T, 4, 64, 1>(o, sc, ss, v, n),
            (2, 64) => weighted_sum::<T, 2, 64, 1>(o, sc, ss, v, n),
            (1, 64) => weighted_sum::<T, 1, 64, 2>(o, sc, ss, v, n),
            (2, 128) => weighted_sum::<T, 2, 128, 1>(o, sc, ss, v, n),
            (1, 128) => weighted_sum::<T, 1, 128, 1>(o, sc, ss, v, n),
            _ => {
                let o = &mut o[..step * hd];
                o.fill(0.0);
                for (h, o) in o.chunks_exact_mut(hd).enumerate() {
                    for (s, vt) in sc[h * ss..][..n].iter().zip(v.chunks_exact(hd)) {
                        for (o, x) in o.iter_mut().zip(vt) {
                            *o = s.mul_add(x.to_f32(), *o);
                        }
                    }
                }
            }
        }
    }
}

/// scores[h * ss + j] = scale · q[h] · k[j] for H heads and one block of keys ([hd, KEY_BLOCK]),
/// the sums kept in registers across the head dimension: U partial sums per score (over
/// dimensions d ≡ u mod U; leftover dimensions go to the first), so that at least 8 independent
/// chains of multiply–adds hide their latency. The main loop indexes only fixed-size chunks, so no
/// bounds check sits inside it: with one there, the accumulators were stored to memory on every pass
/// (measured: attention twice as slow).
fn key_scores<T: KvElem, const H: usize, const U: usize>(
    scores: &mut [f32],
    ss: usize,
    q: &[f32],
    keys: &[T],
    scale: f32,
) {
    let hd = keys.len() / KEY_BLOCK;
    assert!(keys.len() == hd * KEY_BLOCK && q.len() >= H * hd && scores.len() >= (H - 1) * ss + KEY_BLOCK);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the sizes are asserted above.
        return unsafe { avx512::key_scores::<T, H, U>(scores, ss, q, keys, scale) };
    }
    key_scores_portable::<T, H, U>(scores, ss, q, keys, scale)
}

/// [`key_scores`] in plain loops (what the AVX-512 kernel computes, operation for operation).
#[allow(clippy::needless_range_loop)]
fn key_scores_portable<T: KvElem, const H: usize, const U: usize>(
    scores: &mut [f32],
    ss: usize,
    q: &[f32],
    keys: &[T],
    scale: f32,
) {
    let hd = keys.len() / KEY_BLOCK;
    let qs: [&[f32]; H] = std::array::from_fn(|h| &q[h * hd..(h + 1) * hd]);
    let mut acc = [[[0f32; KEY_BLOCK]; H]; U];
    let whole = hd / U * U;
    let (main, rest) = keys.split_at(whole * KEY_BLOCK);
    for (d, kd) in main.chunks_exact(U * KEY_BLOCK).enumerate() {
        let qd: [[f32; U]; H] = std::array::from_fn(|h| qs[h][d * U..][..U].try_into().expect("U dims"));
        for u in 0..U {
            let k: &[T; KEY_BLOCK] = kd[u * KEY_BLOCK..][..KEY_BLOCK].try_into().expect("a block");
            for h in 0..H {
                for j in 0..KEY_BLOCK {
                    acc[u][h][j] = qd[h][u].mul_add(k[j].to_f32(), acc[u][h][j]);
                }
            }
        }
    }
    for (d, k) in (whole..hd).zip(rest.chunks_exact(KEY_BLOCK)) {
        for h in 0..H {
            for j in 0..KEY_BLOCK {
                acc[0][h][j] = qs[h][d].mul_add(k[j].to_f32(), acc[0][h][j]);
            }
        }
    }
    for h in 0..H {
        for (j, s) in scores[h * ss..][..KEY_BLOCK].iter_mut().enumerate() {
            *s = (0..U).map(|u| acc[u][h][j]).sum::<f32>() * scale;
        }
    }
}

/// x[..n] = softmax(x[..n]) in place, in 16 lanes over n rounded up to 16 (x must hold that many;
/// the padding is set to −∞, adds e^−87 ≈ 1e-38 each to the sum (exp clamps there), and is not
/// read afterwards). Attention's rows are short: the training softmax's reductions over 64 lanes,
/// each copying a padded last chunk, cost about as much as its exponentials there.
fn softmax_padded(x: &mut [f32], n: usize) {
    let x = &mut x[..n.next_multiple_of(16)];
    x[n..].fill(f32::NEG_INFINITY);
    let mut m = [f32::NEG_INFINITY; 16];
    for c in x.chunks_exact(16) {
        for i in 0..16 {
            m[i] = m[i].max(c[i]);
        }
    }
    let m = across_lanes(m, f32::max);
    let mut sum = [0f32; 16];
    for c in x.chunks_exact_mut(16) {
        for i in 0..16 {
            c[i] = exp(c[i] - m);
            sum[i] += c[i];
        }
    }
    let inv = 1.0 / across_lanes(sum, |a, b| a + b);
    x[..n].iter_mut().for_each(|v| *v *= inv);
}

/// Folds 16 lanes by halving (8 + 8, 4 + 4, …).
fn across_lanes(mut v: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            v[i] = f(v[i], v[i + half]);
        }
    }
    v[0]
}

/// out[h] = Σ_t p[h, t] · v[t] for H heads (p: [H, ss], first n used), the outputs kept in
/// registers (U partial sums over positions t ≡ u mod U, leftover positions in the first, for at
/// least 8 independent chains of multiply–adds) and each value row loaded once for all heads.
/// v: [>= n, HD].
fn weighted_sum<T: KvElem, const H: usize, const HD: usize, const U: usize>(
    out: &mut [f32],
    p: &[f32],
    ss: usize,
    v: &[T],
    n: usize,
) {
    assert!(v.len() >= n * HD && p.len() >= (H - 1) * ss + n && out.len() >= H * HD);
    #[cfg(target_arch = "x86_64")]
    if HD.is_multiple_of(16) && HD <= 128 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the sizes are asserted above.
        return unsafe { avx512::weighted_sum::<T, H, HD, U>(out, p, ss, v, n) };
    }
    weighted_sum_portable::<T, H, HD, U>(out, p, ss, v, n)
}

/// [`weighted_sum`] in plain loops (what the AVX-512 kernel computes, operation for operation).
#[allow(clippy::needless_range_loop)]
fn weighted_sum_portable<T: KvElem, const H: usize, const HD: usize, const U: usize>(
    out: &mut [f32],
    p: &[f32],
    ss: usize,
    v: &[T],
    n: usize,
) {
    let ps: [&[f32]; H] = std::array::from_fn(|h| &p[h * ss..h * ss + n]);
    let mut acc = [[[0f32; HD]; H]; U];
    let whole = n / U * U;
    let (main, rest) = v[..n * HD].split_at(whole * HD);
    for (t, vu) in main.chunks_exact(U * HD).enumerate() {
        let pt: [[f32; U]; H] = std::array::from_fn(|h| ps[h][t * U..][..U].try_into().expect("U positions"));
        for u in 0..U {
            let vt: &[T; HD] = vu[u * HD..][..HD].try_into().expect("a value row");
            for h in 0..H {
                for i in 0..HD {
                    acc[u][h][i] = pt[h][u].mul_add(vt[i].to_f32(), acc[u][h][i]);
                }
            }
        }
    }
    for (t, vt) in (whole..n).zip(rest.chunks_exact(HD)) {
        for h in 0..H {
            for i in 0..HD {
                acc[0][h][i] = ps[h][t].mul_add(vt[i].to_f32(), acc[0][h][i]);
            }
        }
    }
    for h in 0..H {
        for (i, o) in out[h * HD..(h + 1) * HD].iter_mut().enumerate() {
            *o = (0..U).map(|u| acc[u][h][i]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random::<f32>() - 0.5).collect()
    }

    fn naive(x: &[f32], w: &[f32], nb: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0.0; nb * n];
        for b in 0..nb {
            for j in 0..n {
                o[b * n + j] = (0..k).map(|i| x[b * k + i] as f64 * w[j * k + i] as f64).sum::<f64>() as f32;
            }
        }
        o
    }

    /// out = x @ W^T for either weight format (q8: x quantized first).
    fn product(out: &mut [f32], x: &[f32], w: &Matrix, nb: usize) {
        match w.data {
            Data::F32(_) => matmul(out, x, w, nb),
            Data::Q8 { .. } => {
                let mut xq = QuantRows::default();
                xq.quantize(x, nb, w.cols);
                matmul_quantized(out, &xq, w, nb);
            }
        }
    }

    #[test]
    fn matmul_matches_naive_for_odd_shapes() {
        for (nb, n, k) in [(1, 7, 5), (5, 9, 37), (4, 300, 688), (9, 130, 256)] {
            let (x, w) = (rand_vec(nb * k, 1), rand_vec(n * k, 2));
            let want = naive(&x, &w, nb, n, k);
            for q in [Quant::F32, Quant::Q8] {
                let m = Matrix::new(&w, n, k, q);
                let mut got = vec![0.0; nb * n];
                product(&mut got, &x, &m, nb);
                let tol = if q == Quant::F32 { 1e-4 } else { 0.02 * (k as f32).sqrt() / 8.0 };
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < tol, "{q:?} {nb}x{n}x{k}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q8_product_is_exact_on_dequantized_weights_and_activations() {
        let (nb, n, k) = (5, 33, 688);
        let (x, w) = (rand_vec(nb * k, 5), rand_vec(n * k, 6));
        let q = Matrix::new(&w, n, k, Quant::Q8);
        let mut deq = vec![0.0; n * k];
        for (r, row) in deq.chunks_mut(k).enumerate() {
            q.row(r, row);
        }
        let mut xq = QuantRows::default();
        xq.quantize(&x, nb, k);
        let xdeq: Vec<f32> = (0..nb).flat_map(|b| xq.row(b, k)).collect();
        let want = naive(&xdeq, &deq, nb, n, k);
        let mut got = vec![0.0; nb * n];
        product(&mut got, &x, &q, nb);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// Quantizes a row with the kernel this CPU dispatches to and with the portable loop;
    /// asserts that they agree and returns (q, scales, sums).
    fn quantize_both(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
        let nbk = x.len().div_ceil(Q8_BLOCK);
        // both start from values that a kernel which skipped an element would leave behind
        let mut a = (vec![3i8; nbk * Q8_BLOCK], vec![3f32; nbk], vec![3i32; nbk]);
        let mut b = (vec![1i8; nbk * Q8_BLOCK], vec![1f32; nbk], vec![1i32; nbk]);
        quantize_row(x, &mut a.0, &mut a.1, &mut a.2);
        quantize_row_portable(x, &mut b.0, &mut b.1, &mut b.2);
        let bits = |v: &[f32]| v.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
        assert_eq!((&a.0, bits(&a.1), &a.2), (&b.0, bits(&b.1), &b.2), "row of {}", x.len());
        a
    }

    #[test]
    fn q8_simd_and_portable_quantization_are_identical() {
        // amax 127 makes the scale 1, so -2.5 is an exact tie (rounded to even)
        let mut x: [f32; Q8_BLOCK] = std::array::from_fn(|i| i as f32 * 0.5 - 7.75);
        x[3] = 127.0;
        x[4] = -2.5;
        // also: a block so small that 1/scale overflows, and NaN / infinite values
        let mut tiny = [0.0; Q8_BLOCK];
        tiny[5] = 1e-38;
        let mut bad = x;
        (bad[1], bad[2]) = (f32::NAN, f32::INFINITY);
        let row: Vec<f32> = [x, [0.0; Q8_BLOCK], tiny, bad].concat();
        let (q, d, s) = quantize_both(&row);
        assert_eq!((d[0], s[0]), (1.0, q[..Q8_BLOCK].iter().map(|&v| v as i32).sum()));
        assert_eq!((q[3], q[4], q[0], q[1]), (127, -2, -8, -7));
        // every tail length: the padding quantizes as zeros
        for k in 1..=100 {
            let (q, _, _) = quantize_both(&rand_vec(k, k as u64).iter().map(|v| v * 3.0).collect::<Vec<_>>());
            assert!(q[k..].iter().all(|&v| v == 0), "padding of a row of {k}");
        }
    }

    /// A q8 kernel over all panels: (out, xq, w, nb, panels).
    type Kernel = unsafe fn(SharedMut<f32>, &QuantView, &Matrix, usize, usize);

    /// q8 products of `nb` rows by a [70, k] matrix (a partial last panel): the kernel this CPU
    /// dispatches to (`q8_panels`, or `kernel`) and the portable loop, as bits.
    fn q8_products(nb: usize, k: usize, kernel: Option<Kernel>) -> (Vec<u32>, Vec<u32>) {
        let n = 70;
        let (x, w) = (rand_vec(nb * k, 10), rand_vec(n * k, 11));
        let m = Matrix::new(&w, n, k, Quant::Q8);
        let mut xq = QuantRows::default();
        xq.quantize(&x, nb, k);
        let (mut simd, mut portable) = (vec![0.0; nb * n], vec![0.0; nb * n]);
        let panels = n.div_ceil(LANES);
        // SAFETY: both outputs hold nb * n floats; this thread owns all panels.
        let xq = xq.view();
        unsafe {
            match kernel {
                Some(f) => f(SharedMut::new(&mut simd), &xq, &m, nb, panels),
                None => q8_panels(SharedMut::new(&mut simd), &xq, &m, nb, 0, panels),
            }
            q8_panels_portable(SharedMut::new(&mut portable), &xq, &m, nb, 0, panels);
        }
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
        (bits(simd), bits(portable))
    }

    #[test]
    fn q8_simd_and_portable_products_are_bit_identical() {
        // 7 rows: VNNI tiles alone; 27: with AMX, tiles of 16 and 8 rows and 3 rows left to VNNI
        for nb in [7, 27] {
            let (simd, portable) = q8_products(nb, 100, None);
            assert_eq!(simd, portable, "{nb} rows");
        }
    }

    /// The AMX kernel alone (where this CPU and OS offer it): 1, 3 (an odd count ends its
    /// two-set pipeline early) and 4 blocks of columns (70 and 100: the last one partial).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q8_amx_and_portable_products_are_bit_identical() {
        if !amx::available() {
            eprintln!("skipped: this CPU or OS offers no AMX-INT8");
            return;
        }
        // SAFETY: AMX is available; q8_products passes buffers for nb rows and all panels.
        let f: Kernel = |o, xq, m, nb, panels| unsafe { amx::q8_panels(o.at(0), xq, m, nb, 0, panels) };
        for (nb, k) in [(24, 32), (16, 70), (8, 100), (24, 100)] {
            let (simd, portable) = q8_products(nb, k, Some(f));
            assert_eq!(simd, portable, "{nb} rows, {k} columns");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn attention_simd_and_portable_kernels_are_bit_identical() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        fn check<T: KvElem>(elem: impl Fn(f32) -> T) {
            let ss = 2 * KEY_BLOCK + 8;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let same = |a: Vec<f32>, b: Vec<f32>, what: &str| assert!(bits(&a) == bits(&b), "{what}: {a:?} vs {b:?}");
            // head dims with and without leftover dimensions for U partial sums
            for hd in [32usize, 48, 64, 9, 11] {
                let keys: Vec<T> = rand_vec(hd * KEY_BLOCK, 1).into_iter().map(&elem).collect();
                let q = rand_vec(4 * hd, 2);
                macro_rules! scores {
                    ($($h:literal, $u:literal);*) => {$({
                        let (mut simd, mut plain) = (vec![0.0; 4 * ss], vec![0.0; 4 * ss]);
                        // SAFETY: the CPU has AVX-512F; keys [hd, 32], q [4, hd], scores [4, ss].
                        unsafe { avx512::key_scores::<T, $h, $u>(&mut simd, ss, &q, &keys, 0.3) };
                        key_scores_portable::<T, $h, $u>(&mut plain, ss, &q, &keys, 0.3);
                        same(simd, plain, &format!("key_scores H {} U {} hd {hd}", $h, $u));
                    })*};
                }
                scores!(4, 1; 3, 2; 2, 2; 1, 4);
            }
            // positions with and without leftovers for U partial sums
            for n in [1usize, 6, 37, 70] {
                let v: Vec<T> = rand_vec(n * 128, 3).into_iter().map(&elem).collect();
                let p = rand_vec(4 * ss, 4);
                macro_rules! sums {
                    ($($h:literal, $hd:literal, $u:literal);*) => {$({
                        let (mut simd, mut plain) = (vec![0.0; 4 * 128], vec![0.0; 4 * 128]);
                        // SAFETY: the CPU has AVX-512F; v [n, 128], p [4, ss], out [4, 128].
                        unsafe { avx512::weighted_sum::<T, $h, $hd, $u>(&mut simd, &p, ss, &v, n) };
                        weighted_sum_portable::<T, $h, $hd, $u>(&mut plain, &p, ss, &v, n);
                        same(simd, plain, &format!("weighted_sum H {} HD {} U {} n {n}", $h, $hd, $u));
                    })*};
                }
                sums!(4, 32, 1; 2, 32, 2; 1, 32, 4; 4, 48, 1; 2, 48, 2; 1, 48, 4; 4, 64, 1; 2, 64, 1; 1, 64, 2; 2, 128, 1; 1, 128, 1);
            }
        }
        check(|x| x);
        check(f16::from_f32);
        check(|x| (x * 250.0) as i8);
    }

    #[test]
    fn attend_matches_naive_softmax_attention() {
        // (head_dim, query heads sharing the KV head, positions)
        // every weighted-sum tile (heads × head_dim × partial sums) and the general path
        for (hd, g, n) in [
            (32usize, 4usize, 150usize),
            (32, 2, 70),
            (32, 1, 41),
            (48, 4, 50),
            (48, 2, 45),
            (48, 1, 129),
            (64, 2, 70),
            (64, 1, 37),
            (64, 8, 33),
            (128, 3, 45),
            (9, 3, 33),
            (11, 2, 40),
            (10, 5, 5),
        ] {
            let cap = (n + 3).next_multiple_of(KEY_BLOCK);
            let ss = cap + KEY_BLOCK;
            // 4x larger q makes the softmax peaky
            let q: Vec<f32> = rand_vec(g * hd, 7).iter().map(|x| x * 4.0).collect();
            let (kb, v) = (rand_vec(hd * cap, 8), rand_vec(cap * hd, 9));
            let key = |t: usize, d: usize| kb[((t / KEY_BLOCK) * hd + d) * KEY_BLOCK + t % KEY_BLOCK] as f64;
            let mut out = vec![0.0; g * hd];
            attend(&mut out, &mut vec![0.0; g * ss], ss, &q, &kb, &v, hd, n, None);
            for h in 0..g {
                let s: Vec<f64> = (0..n)
                    .map(|t| {
                        let dot: f64 = (0..hd).map(|d| q[h * hd + d] as f64 * key(t, d)).sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    let want: f64 = (0..n).map(|t| (s[t] - m).exp() / z * v[t * hd + d] as f64).sum();
                    let o = out[h * hd + d] as f64;
                    assert!((o - want).abs() < 1e-5, "hd {hd} g {g} n {n} head {h} d {d}: {o} vs {want}");
                }
            }
        }
    }

    #[test]
    fn f16_attention_equals_f32_attention_on_the_same_rounded_values() {
        let to16 = |v: Vec<f32>| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
        let wide = |h: &[f16]| -> Vec<f32> { h.iter().map(|x| x.to_f32()).collect() };
        // (head_dim, query heads sharing the KV head, positions): tiles, partial sums, general path
        for (hd, g, n) in [(64usize, 4usize, 70usize), (32, 2, 45), (128, 3, 40), (11, 2, 40), (9, 3, 33), (10, 5, 5)] {
            let ss = n.next_multiple_of(KEY_BLOCK);
            let (kb, v) = (to16(rand_vec(hd * ss, 8)), to16(rand_vec(ss * hd, 9)));
            let q = rand_vec(g * hd, 7);
            let (mut a, mut b) = (vec![0.0; g * hd], vec![0.0; g * hd]);
            attend(&mut a, &mut vec![0.0; g * ss], ss, &q, &kb, &v, hd, n, None);
            attend(&mut b, &mut vec![0.0; g * ss], ss, &q, &wide(&kb), &wide(&v), hd, n, None);
            assert_eq!(a, b, "hd {hd} g {g} n {n}");
        }
    }

    #[test]
    fn scaled_int8_attention_equals_f32_attention_on_the_dequantized_values() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for (hd, g, n) in [(64usize, 4usize, 70usize), (32, 2, 45), (128, 3, 40), (11, 2, 40), (10, 5, 5)] {
            let ss = n.next_multiple_of(KEY_BLOCK);
            let (k8, v8): (Vec<i8>, Vec<i8>) = (0..hd * ss).map(|_| (r.random::<i8>(), r.random::<i8>())).unzip();
            let (ks, vs): (Vec<f32>, Vec<f32>) =
                (0..ss).map(|_| (r.random::<f32>() / 64.0, r.random::<f32>() / 64.0)).unzip();
            let kf: Vec<f32> =
                (0..hd * ss).map(|i| k8[i] as f32 * ks[(i / (hd * KEY_BLOCK)) * KEY_BLOCK + i % KEY_BLOCK]).collect();
            let vf: Vec<f32> = (0..hd * ss).map(|i| v8[i] as f32 * vs[i / hd]).collect();
            let q = rand_vec(g * hd, 7);
            let (mut a, mut b) = (vec![0.0; g * hd], vec![0.0; g * hd]);
            attend(&mut a, &mut vec![0.0; g * ss], ss, &q, &k8, &v8, hd, n, Some((&ks, &vs)));
            attend(&mut b, &mut vec![0.0; g * ss], ss, &q, &kf, &vf, hd, n, None);
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "hd {hd} g {g} n {n}: max |diff| {worst}");
        }
    }

    #[test]
    fn batched_rows_are_bit_identical_to_single_rows() {
        // f32: 15 rows in 2×8 tiles with 4-, 2- and 1-row leftovers; 23 in a 1×16 tile, then 4,
        // 2, 1; 27 in 16, 8, 2, 1. 70 outputs: 5 panels, so 2- and 3-panel tiles and a lone one
        // (all panels in one call: `matmul` could hand each thread a panel at a time).
        for (nb, n, k) in [(15, 70, 100), (23, 70, 101), (27, 70, 101)] {
            let (x, w) = (rand_vec(nb * k, 3), rand_vec(n * k, 4));
            for q in [Quant::F32, Quant::Q8] {
                let m = Matrix::new(&w, n, k, q);
                let mut all = vec![0.0; nb * n];
                let (out, panels) = (SharedMut::new(&mut all), n.div_ceil(LANES));
                let mut xq = QuantRows::default();
                xq.quantize(&x, nb, k);
                // SAFETY: `all` holds nb * n floats; this thread owns all panels.
                unsafe {
                    match q {
                        Quant::F32 => f32_panels(out, &x, &m, nb, 0, panels),
                        Quant::Q8 => q8_panels(out, &xq.view(), &m, nb, 0, panels),
                    }
                }
                for b in 0..nb {
                    let mut one = vec![0.0; n];
                    product(&mut one, &x[b * k..(b + 1) * k], &m, 1);
                    assert_eq!(one, all[b * n..(b + 1) * n], "{q:?} {nb} rows, row {b}");
                }
            }
        }
    }
}
