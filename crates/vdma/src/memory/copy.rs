//! The one routine that moves bytes between a caller's buffer and mapped memory.
//!
//! Sizes, from the hot path's point of view:
//!
//! - 1, 2, 4, 8 bytes (device registers, descriptors): one load and one store;
//! - [`VECTOR_MIN`]..=[`VECTOR_MAX`] bytes *into the caller's buffer* ([`copy_in`]) on a CPU
//!   with AVX: a loop of 32-byte vector loads and stores, 256 bytes per turn. glibc's `memcpy` switches to `rep movsb` from 2,112 bytes
//!   (`glibc.cpu.x86_rep_movsb_threshold`), and on the machine the benchmarks run on (AMD EPYC,
//!   Zen 4, glibc 2.36) that instruction takes 43-44 ns for a hot 4 KiB copy where this loop
//!   takes about 37 ns (8 KiB: 91 vs 80 ns; 16 KiB: 236 vs 226 ns; from 32 KiB on, the same).
//!   The figures and the command that made them are in BENCHMARKS.md (`copy_routine` group).
//!   256-bit vectors, not AVX-512: as fast here within 1.5 ns, and no clock-speed penalty on
//!   the Intel CPUs that lower their frequency for 512-bit instructions. Not for copies *into
//!   mapped memory* ([`copy_out`]): guest memory is often not in cache, and there vector stores
//!   must first read each line from DRAM where `rep movsb` writes whole lines without reading
//!   them (4 KiB writes sweeping 1 GiB: 298 ns with the loop, 205 ns with `memcpy`; reads
//!   from cold memory lose only 2%: 218 against 213 ns, `copy_sweep_*` in BENCHMARKS.md).
//! - everything else: `copy_nonoverlapping` (glibc's `memcpy`).
//!
//! No path makes a Rust reference to either side: the memory may be shared with a guest or
//! another process that changes it during the copy; the copy then holds some mix of old and
//! new bytes, as a device's DMA would.

/// The smallest copy the vector loop takes (below it, `memcpy` does not use `rep movsb`).
pub const VECTOR_MIN: usize = 2 * 1024;
/// The largest copy the vector loop takes.
pub const VECTOR_MAX: usize = 16 * 1024;

const _: () = assert!(
    VECTOR_MIN >= vector::TURN,
    "the vector loop needs a whole turn"
);

/// Copies `len` bytes from mapped memory at `src` into the caller's buffer at `dst`.
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, and the ranges must not overlap.
#[inline(always)]
pub unsafe fn copy_in(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { copy::<true>(src, dst, len) }
}

/// Copies `len` bytes from the caller's buffer at `src` into mapped memory at `dst`.
///
/// # Safety
/// As [`copy_in`].
#[inline(always)]
pub unsafe fn copy_out(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { copy::<false>(src, dst, len) }
}

/// Copies `len` bytes from `src` to `dst`; with `VECTOR`, 2-16 KiB through the vector loop.
///
/// # Safety
/// As [`copy_in`].
#[inline(always)]
unsafe fn copy<const VECTOR: bool>(src: *const u8, dst: *mut u8, len: usize) {
    if len > 8 {
        if VECTOR && (VECTOR_MIN..=VECTOR_MAX).contains(&len) && vector::available() {
            // SAFETY: as the caller promised; the length is at least `vector::TURN` as
            // `copy_vector` requires, and the CPU has AVX (checked just above).
            unsafe { vector::copy_vector(src, dst, len) };
        } else {
            // SAFETY: as the caller promised.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        }
        return;
    }
    // SAFETY: as the caller promised; each case reads and writes exactly `len` bytes.
    unsafe {
        match len {
            8 => dst
                .cast::<u64>()
                .write_unaligned(src.cast::<u64>().read_unaligned()),
            4 => dst
                .cast::<u32>()
                .write_unaligned(src.cast::<u32>().read_unaligned()),
            2 => dst
                .cast::<u16>()
                .write_unaligned(src.cast::<u16>().read_unaligned()),
            1 => *dst = *src,
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};

    /// Bytes moved per turn of the loop: eight 32-byte vectors.
    pub const TURN: usize = 256;

    /// Whether this CPU has AVX (std caches the answer: one load and a bit test).
    #[inline(always)]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx")
    }

    /// Copies `len >= TURN` bytes with 32-byte vector loads and stores: whole turns, then the
    /// last turn's worth again from the end (overlapping bytes the turns copied, so there is no
    /// byte-sized tail loop).
    ///
    /// # Safety
    /// As [`super::copy`]; also `len >= TURN` and the CPU has AVX.
    #[target_feature(enable = "avx")]
    pub unsafe fn copy_vector(src: *const u8, dst: *mut u8, len: usize) {
        debug_assert!(len >= TURN);
        let last = len - TURN;
        let mut at = 0;
        while at < last {
            // SAFETY: `at + TURN <= last + TURN = len`: inside both ranges.
            unsafe { turn(src.add(at), dst.add(at)) };
            at += TURN;
        }
        // SAFETY: `last + TURN = len`: inside both ranges.
        unsafe { turn(src.add(last), dst.add(last)) };
    }

    /// Copies one turn: eight loads, then eight stores.
    ///
    /// # Safety
    /// `src` readable and `dst` writable for `TURN` bytes, not overlapping; the CPU has AVX.
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn turn(src: *const u8, dst: *mut u8) {
        let s = src.cast::<__m256i>();
        let d = dst.cast::<__m256i>();
        // SAFETY: the caller's contract; `loadu`/`storeu` take unaligned addresses.
        unsafe {
            let v = [
                _mm256_loadu_si256(s),
                _mm256_loadu_si256(s.add(1)),
                _mm256_loadu_si256(s.add(2)),
                _mm256_loadu_si256(s.add(3)),
                _mm256_loadu_si256(s.add(4)),
                _mm256_loadu_si256(s.add(5)),
                _mm256_loadu_si256(s.add(6)),
                _mm256_loadu_si256(s.add(7)),
            ];
            for (i, x) in v.into_iter().enumerate() {
                _mm256_storeu_si256(d.add(i), x);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vector {
    /// Bytes per turn (unused: there is no vector loop on this architecture).
    pub const TURN: usize = 256;

    /// No vector loop on this architecture: `memcpy` does every bulk copy.
    #[inline(always)]
    pub fn available() -> bool {
        false
    }

    /// Never called (`available` is false).
    ///
    /// # Safety
    /// As [`super::copy`].
    pub unsafe fn copy_vector(src: *const u8, dst: *mut u8, len: usize) {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the vector loop's edges and turns, at odd offsets on both sides:
    /// the bytes arrive, and nothing before or after the destination range changes.
    #[test]
    fn copy_moves_exactly_len_bytes_at_any_alignment() {
        let lengths = [
            0,
            1,
            2,
            3,
            4,
            7,
            8,
            9,
            127,
            VECTOR_MIN - 1,
            VECTOR_MIN,
            VECTOR_MIN + 1,
            VECTOR_MIN + 127,
            4096,
            4096 + 33,
            VECTOR_MAX - 1,
            VECTOR_MAX,
            VECTOR_MAX + 1,
        ];
        for (len, vector_loop) in lengths.into_iter().flat_map(|l| [(l, true), (l, false)]) {
            for (src_off, dst_off) in [(0, 0), (1, 3), (31, 0), (0, 17)] {
                let src: Vec<u8> = (0..len + 64).map(|i| (i * 7 + 3) as u8).collect();
                let mut dst = vec![0xa5u8; len + 128];
                // SAFETY: both ranges are inside their vectors, which do not overlap.
                unsafe {
                    let (from, to) = (
                        src.as_ptr().add(src_off),
                        dst.as_mut_ptr().add(dst_off + 32),
                    );
                    if vector_loop {
                        copy_in(from, to, len)
                    } else {
                        copy_out(from, to, len)
                    }
                };
                assert_eq!(
                    &dst[dst_off + 32..dst_off + 32 + len],
                    &src[src_off..src_off + len],
                    "len {len}, offsets {src_off}/{dst_off}"
                );
                assert!(
                    dst[..dst_off + 32].iter().all(|&b| b == 0xa5),
                    "before, len {len}"
                );
                assert!(
                    dst[dst_off + 32 + len..].iter().all(|&b| b == 0xa5),
                    "after, len {len}"
                );
            }
        }
    }
}
