//! The training kernels: one module per op, forward and backward side by side, plain functions
//! over slices with explicit sizes. Backward functions accumulate (`+=`) into gradients.
//! This module is the boundary behind which another backend (e.g. CUDA) would slot in.

pub mod attention;
pub mod crossentropy;
pub mod embedding;
pub mod gemm;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

/// A buffer that several threads write at once, each its own elements (which elements is the
/// caller's invariant; debug builds check that slices lie in the buffer). Borrows the buffer for
/// `'a`.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> Clone for SharedMut<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<'_, T> {}
// SAFETY: threads use disjoint elements (the contract of `slice` and `at`).
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(buf: &'a mut [T]) -> Self {
        SharedMut { ptr: buf.as_mut_ptr(), len: buf.len(), _buf: std::marker::PhantomData }
    }
    /// Elements `at..at + len`.
    /// # Safety
    /// They lie in the buffer, and no other thread uses them meanwhile.
    pub unsafe fn slice(self, at: usize, len: usize) -> &'a mut [T] {
        debug_assert!(at + len <= self.len, "{at} + {len} elements in a buffer of {}", self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
    /// Elements `at..at + len`, read only.
    /// # Safety
    /// They lie in the buffer, and no thread writes them meanwhile.
    pub unsafe fn read(self, at: usize, len: usize) -> &'a [T] {
        debug_assert!(at + len <= self.len, "{at} + {len} elements in a buffer of {}", self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }
    /// A pointer to element `at`, for kernels that take pointers and strides (debug builds check
    /// `at`, not how far the kernel writes).
    /// # Safety
    /// `at` is within the buffer; what is written through it, no other thread uses meanwhile.
    pub unsafe fn at(self, at: usize) -> *mut T {
        debug_assert!(at <= self.len, "element {at} of a buffer of {}", self.len);
        unsafe { self.ptr.add(at) }
    }
}

/// Rows per task in row-parallel kernels and in reductions. Fixed (not derived from the thread
/// count) so that sums happen in the same order on any machine: results are reproducible.
pub const ROWS_PER_TASK: usize = 64;

/// Sums per-chunk partial vectors in chunk order: the deterministic reduction behind weight
/// gradients of row-parallel kernels. `partials`: [chunks, c] -> `out[c] += Σ`.
pub fn reduce_partials(out: &mut [f32], partials: &[f32]) {
    let c = out.len();
    for part in partials.chunks_exact(c) {
        out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
    }
}

/// x = softmax(x · scale) in place (training and inference attention); returns the log-sum-exp
/// of x · scale.
pub fn softmax(x: &mut [f32], scale: f32) -> f32 {
    let (max, sum) = exp_shifted(x, scale);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
    max + sum.ln()
}

/// x = exp(x · scale − m) in place, m = max(x · scale): an unnormalised softmax (sampling keeps
/// the mass itself). Returns (m, Σ x).
pub fn exp_shifted(x: &mut [f32], scale: f32) -> (f32, f32) {
    let max = reduce_lanes(x, f32::NEG_INFINITY, f32::max) * scale;
    exp_scaled(x, scale, max);
    (max, reduce_lanes(x, 0.0, |a, b| a + b))
}

/// x = exp(x · scale − shift) in place. 16-wide AVX-512 where the CPU has it (the compiler's own
/// vectors are 8 wide on some CPUs it tunes for), computing what [`exp`] does, bit for bit.
fn exp_scaled(x: &mut [f32], scale: f32, shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { avx512::exp_scaled(x, scale, shift) };
    }
    x.iter_mut().for_each(|v| *v = exp(*v * scale - shift));
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::exp_scaled`], 16 values at a time (the last few under a mask).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_scaled(x: &mut [f32], scale: f32, shift: f32) {
        let (sc, sh) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
        for at in (0..x.len()).step_by(16) {
            let mask: __mmask16 = if x.len() - at >= 16 { !0 } else { (1 << (x.len() - at)) - 1 };
            // SAFETY: the mask covers only elements at..x.len().
            unsafe {
                let p = x.as_mut_ptr().add(at);
                let v = _mm512_maskz_loadu_ps(mask, p);
                _mm512_mask_storeu_ps(p, mask, exp(_mm512_sub_ps(_mm512_mul_ps(v, sc), sh)));
            }
        }
    }

    /// [`super::exp`] on 16 lanes: the same operations, so the same results.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let low = _mm512_set1_ps(-87.0);
        // x < −87 (false for NaN, which stays NaN)
        let x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, low), x, low);
        let n = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(0.5));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(n);
        let r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693_359_4)));
        let r = _mm512_add_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(2.121_944_4e-4)));
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let bits = _mm512_sub_epi32(
            _mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(12_582_912.0))),
            _mm512_set1_epi32(0x4B40_0000),
        );
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127))));
        _mm512_mul_ps(e, two_n)
    }
}

/// A reduction in independent lanes (so it vectorises): 64 of them — four vectors, so four
/// chains hide the latency of each step — over whole chunks of 64, the last chunk padded with
/// `init`, then across lanes by halving (64 → 32 → … → 1, each halving one vector operation; a
/// fold lane by lane would be a chain of 63 dependent ones, which dominated short rows).
/// `init` must leave `f` unchanged (0 for sums, −∞ for maxima): it seeds every lane.
pub fn reduce_lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 64];
    let wide = x.chunks_exact(64);
    let rest = wide.remainder();
    for c in wide {
        for i in 0..64 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut last = [init; 64];
    last[..rest.len()].copy_from_slice(rest);
    for i in 0..64 {
        acc[i] = f(acc[i], last[i]);
    }
    for half in [32, 16, 8, 4, 2, 1] {
        for i in 0..half {
            acc[i] = f(acc[i], acc[i + half]);
        }
    }
    acc[0]
}

/// e^x for x <= 0 (Cephes `expf`: range reduction by ln 2, degree-6 polynomial; ~1 ulp),
/// written without calls so that loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // not x.max(-87.0): that would turn NaN into -87, and a diverging loss must stay NaN
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2^n from the bits of n + 1.5·2^23 (its low bits hold n): no float-to-int cast, whose
    // saturating semantics would keep the loop scalar.
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    e * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// 1 / (1 + e^-x), through [`exp`] of -|x| so that loops over it vectorise.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) }
}

/// x · sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in 0..1740 {
            let x = -(i as f32) * 0.05;
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 2e-7 * b + 1e-38, "exp({x}): {a} vs {b}");
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp_scaled_equals_exp_bit_for_bit() {
        // every length up to two vectors and then some (masked tails), the edge cases, and a sweep
        let special = [0.0, -0.0, -87.0, -87.5, -200.0, f32::NEG_INFINITY, f32::NAN, 1.5, -1e-8, 88.0];
        let sweep: Vec<f32> = (0..4001).map(|i| -95.0 + i as f32 * 0.025).collect();
        for n in (0..40).chain([sweep.len()]) {
            let x: Vec<f32> = if n == sweep.len() {
                sweep.clone()
            } else {
                (0..n)
                    .map(|i| if i < special.len() { special[i] } else { (i as f32 * 0.37).sin() * 30.0 - 10.0 })
                    .collect()
            };
            let mut got = x.clone();
            exp_scaled(&mut got, 1.25, 0.5);
            for (g, v) in got.iter().zip(&x) {
                let want = exp(*v * 1.25 - 0.5);
                assert!(g.to_bits() == want.to_bits(), "exp({v} * 1.25 - 0.5): {g} vs {want}");
            }
        }
    }

    #[test]
    fn reduce_lanes_takes_every_value_at_any_length() {
        // lengths around the 64- and 16-lane chunks; integers, so every sum is exact
        for n in [0usize, 1, 15, 16, 17, 63, 64, 65, 80, 127, 128, 129, 200] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32).collect();
            assert_eq!(reduce_lanes(&v, 0.0, |a, b| a + b), v.iter().sum::<f32>(), "sum of {n}");
            for at in [0, n / 2, n.saturating_sub(1)].into_iter().filter(|&i| i < n) {
                let mut w = v.clone();
                w[at] = 1000.0;
                assert_eq!(reduce_lanes(&w, f32::NEG_INFINITY, f32::max), 1000.0, "max of {n} at {at}");
            }
        }
        assert_eq!(reduce_lanes(&[], f32::NEG_INFINITY, f32::max), f32::NEG_INFINITY);
    }

    #[test]
    fn silu_is_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.05;
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - want).abs() <= 3e-7 * want.abs() + 1e-30, "silu({x}): {} vs {want}", silu(x));
        }
    }
}
