//! Buffers that start on a 64-byte cache line. The system allocator aligns blocks to 16 bytes only
//! (large ones sit 16 bytes past a line), and then every 64-byte AVX-512 load of a weight panel or
//! a KV cache block straddles two lines.

use std::ops::{Deref, DerefMut};

const LINE: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; LINE]);

/// Element types for which all-zero bytes are the value zero.
///
/// # Safety
/// Implement only for plain types (no padding, no pointers) whose all-zero bit pattern is valid.
pub unsafe trait Zeroable: Copy {}
// SAFETY: plain numbers; all-zero bits are 0.
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for u8 {}
unsafe impl Zeroable for i8 {}
unsafe impl Zeroable for half::f16 {}

/// `len` values of `T`, zeroed, starting on a cache line.
pub struct Aligned<T: Zeroable> {
    lines: Vec<Line>,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Zeroable> Aligned<T> {
    pub fn zeroed(len: usize) -> Self {
        let lines = vec![Line([0; LINE]); (len * size_of::<T>()).div_ceil(LINE)];
        Aligned { lines, len, _elem: std::marker::PhantomData }
    }
}

impl<T: Zeroable> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least len * size_of::<T>() initialised bytes, aligned to 64
        // (≥ T's alignment), and any bytes are a valid T (Zeroable: plain numbers).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Zeroable> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref; &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_zeroed_and_holds_what_is_written() {
        for len in [1usize, 15, 16, 17, 1000, 300_000] {
            let mut a = Aligned::<f32>::zeroed(len);
            assert_eq!(a.as_ptr() as usize % LINE, 0, "{len} values");
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&x| x == 0.0));
            a.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert!(a.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
        assert_eq!(Aligned::<half::f16>::zeroed(33).as_ptr() as usize % LINE, 0);
    }
}
