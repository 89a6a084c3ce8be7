//! On-disk formats for weights. Each reader validates every length and offset against the
//! file before allocating, so a corrupt or hostile file is an error naming the file, never a
//! panic or a huge allocation.

pub mod gguf;
pub mod hf;
pub mod hub;
pub mod pth;

/// Drops the pages of `map[offset..offset + len]` from this process's resident set (whole pages
/// inside the range only). The mapping is a read-only file mapping, so the kernel re-reads the
/// bytes from the file if they are touched again: contents never change, only memory is freed.
pub(crate) fn release_pages(map: &memmap2::Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + len) / PAGE * PAGE;
        if end > start && end <= map.len() {
            // SAFETY: MADV_DONTNEED on a private read-only file mapping discards pages that are
            // re-read from the file on the next access; no reference sees different bytes.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}
