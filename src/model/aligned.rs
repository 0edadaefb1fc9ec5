//! Buffers that start on a 64-byte cache line. The system allocator aligns blocks to 16 bytes only
//! (large ones sit 16 bytes past a line), and then every 64-byte AVX-512 load of a weight panel or
//! a KV cache block straddles two lines.
//!
//! Buffers of 2 MiB and more are mapped on their own, starting on a 2 MiB boundary, and on Linux
//! marked for transparent huge pages (`madvise`: the usual kernel setting gives them only to
//! memory marked so). Training steps and decode steps stream tens of MB, and on 4 KiB pages each
//! page costs a TLB miss (a nested page walk in a VM) and stops the hardware prefetcher at its end.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

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
    mem: Memory,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

enum Memory {
    Heap(Vec<Line>),
    #[cfg(target_os = "linux")]
    Mapped(huge::Mapping),
}

impl<T: Zeroable> Aligned<T> {
    pub fn zeroed(len: usize) -> Self {
        let bytes = len * size_of::<T>();
        #[cfg(target_os = "linux")]
        if bytes >= huge::PAGE
            && let Some(m) = huge::Mapping::new(bytes)
        {
            return Aligned { mem: Memory::Mapped(m), len, _elem: std::marker::PhantomData };
        }
        let lines = vec![Line([0; LINE]); bytes.div_ceil(LINE)];
        Aligned { mem: Memory::Heap(lines), len, _elem: std::marker::PhantomData }
    }

    fn ptr(&self) -> *const u8 {
        match &self.mem {
            Memory::Heap(lines) => lines.as_ptr().cast(),
            #[cfg(target_os = "linux")]
            Memory::Mapped(m) => m.ptr,
        }
    }
}

impl<T: Zeroable> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the memory holds at least len * size_of::<T>() initialised bytes, aligned to 64
        // (≥ T's alignment), and any bytes are a valid T (Zeroable: plain numbers).
        unsafe { std::slice::from_raw_parts(self.ptr().cast(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref; &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().cast_mut().cast(), self.len) }
    }
}

/// Bytes `at..at + len * size_of::<T>()` of `bytes` as `T`s.
/// Panics unless `at` is a multiple of 64 and the range lies within `bytes`.
pub fn cast_mut<T: Zeroable>(bytes: &mut [u8], at: usize, len: usize) -> &mut [T] {
    let part = &mut bytes[at..at + len * size_of::<T>()];
    assert!(at.is_multiple_of(LINE) && (part.as_ptr() as usize).is_multiple_of(align_of::<T>()));
    // SAFETY: in bounds and aligned (checked); any bytes are a valid T (Zeroable).
    unsafe { std::slice::from_raw_parts_mut(part.as_mut_ptr().cast(), len) }
}

/// `len` values of `T` at byte `at` of a buffer shared with other parts (the matrices of one
/// model, packed into one buffer).
pub struct Part<T: Zeroable> {
    buf: Arc<Aligned<u8>>,
    at: usize,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Zeroable> Part<T> {
    /// Panics unless `at` is a multiple of 64 and the range lies within `buf`.
    pub fn new(buf: Arc<Aligned<u8>>, at: usize, len: usize) -> Self {
        assert!(at.is_multiple_of(LINE) && at + len * size_of::<T>() <= buf.len());
        Part { buf, at, len, _elem: std::marker::PhantomData }
    }
}

impl<T: Zeroable> Deref for Part<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: in bounds and aligned (checked in new: the buffer starts on a line); any bytes
        // are a valid T (Zeroable).
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(self.at).cast(), self.len) }
    }
}

#[cfg(target_os = "linux")]
mod huge {
    /// The huge page size on x86-64 and on arm64 with 4 KiB pages (elsewhere the mapping still
    /// works, on whatever pages the kernel gives).
    pub const PAGE: usize = 2 << 20;

    /// An anonymous private mapping (zero-filled by the kernel) starting on a PAGE boundary.
    pub struct Mapping {
        pub ptr: *const u8,
        size: usize,
    }

    // SAFETY: the mapping is plain memory owned by this value; access goes through Aligned's
    // & and &mut methods.
    unsafe impl Send for Mapping {}
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// None if the OS refuses the mapping (the caller then uses the heap).
        pub fn new(bytes: usize) -> Option<Self> {
            // SAFETY: sysconf only reads a system setting.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            let size = bytes.next_multiple_of(page);
            // SAFETY: a fresh anonymous mapping; the parts unmapped below lie within it and
            // outside [start, start + size).
            unsafe {
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                let prot = libc::PROT_READ | libc::PROT_WRITE;
                let p = libc::mmap(std::ptr::null_mut(), size + PAGE, prot, flags, -1, 0);
                if p == libc::MAP_FAILED {
                    return None;
                }
                let (p, start) = (p as usize, (p as usize).next_multiple_of(PAGE));
                if start > p {
                    libc::munmap(p as *mut libc::c_void, start - p);
                }
                let end = p + size + PAGE;
                if end > start + size {
                    libc::munmap((start + size) as *mut libc::c_void, end - start - size);
                }
                // Only a hint: without huge pages the buffer works the same, on 4 KiB pages.
                libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
                Some(Mapping { ptr: start as *const u8, size })
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: this value owns the mapping; nothing refers to it after drop.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.size) };
        }
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

    /// Large buffers come from their own mapping: zeroed, writable to the end, on a 2 MiB
    /// boundary where Linux maps them.
    #[test]
    fn large_buffers_are_zeroed_writable_and_on_a_huge_page_boundary() {
        for len in [(2 << 20) / 4, (5 << 20) / 4 + 3] {
            let mut a = Aligned::<f32>::zeroed(len);
            #[cfg(target_os = "linux")]
            {
                assert_eq!(a.as_ptr() as usize % (2 << 20), 0, "{len} values");
                // a kernel built without transparent huge pages refuses the advice
                let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
                assert!(!thp || marked_for_huge_pages(a.as_ptr() as usize), "{len} values: no MADV_HUGEPAGE");
            }
            assert!(a.iter().all(|&x| x == 0.0));
            a.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert!(a.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }

    /// Whether the mapping that holds `addr` carries the huge-page advice ("hg" in its VmFlags).
    #[cfg(target_os = "linux")]
    fn marked_for_huge_pages(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            let bounds =
                range.and_then(|(a, b)| Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?)));
            if let Some((start, end)) = bounds {
                inside = (start..end).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().any(|f| f == "hg");
            }
        }
        false
    }

    #[test]
    fn parts_view_their_own_range_of_a_shared_buffer() {
        let mut buf = Aligned::<u8>::zeroed(256);
        cast_mut::<f32>(&mut buf, 64, 3).copy_from_slice(&[1.0, 2.0, 3.0]);
        cast_mut::<u8>(&mut buf, 128, 2).copy_from_slice(&[7, 8]);
        let buf = Arc::new(buf);
        assert_eq!(&*Part::<f32>::new(buf.clone(), 64, 3), &[1.0, 2.0, 3.0]);
        assert_eq!(&*Part::<u8>::new(buf, 128, 3), &[7, 8, 0]);
    }
}
