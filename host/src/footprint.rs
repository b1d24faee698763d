//! Giving back the memory only start-up used: the executable's code pages.
//!
//! A daemon's start runs code it never runs again: argument and configuration parsing, opening the
//! stores, the clients' set-up, and Cranelift when the plugin is not in the compile cache. Those pages
//! of the executable stay resident afterwards: clean and file-backed (the kernel would drop them under
//! memory pressure), but counted in RSS, where they were most of an idle node's (12.5 of 21.5 MiB,
//! `bench/README.md`). Once start-up is over the node drops its mapping of them
//! ([`release_startup_code`]): the pages the loop and the servers run come back at their next use as
//! minor faults from the page cache (no disk read, a few hundred of them once), the rest stay out.
//! Measured on a lone release node: 12.6 MiB of code resident before, 0.4 MiB just after, 9.2 MiB a
//! few ticks later (the kernel maps 64 KiB around each faulting page, where those pages are in the
//! page cache), RSS 21.3 → 18.3 MiB. The release runs on the node loop, so it reads little (see
//! [`release_startup_code`]).
//!
//! Only the executable's code (`r-xp`) is dropped: it is never written, so `MADV_DONTNEED` on it
//! loses nothing. Read-only data is left alone (its RELRO part was written by the dynamic linker
//! before it became read-only, and dropping it would revert that).
//!
//! The heap: glibc keeps freed memory for reuse. [`trim_heap`] gives it back after a compile and at
//! the end of start-up, and [`bound_heap_retention`] (set before the daemon's threads start) keeps
//! glibc from raising its trim threshold after large frees: Cranelift's frees would otherwise leave
//! the unused tops of the compiling threads' heaps resident, which `malloc_trim` does not reach
//! (12.4 against 7.0 MiB of anonymous memory after a start that compiled the plugin).

/// What [`release_startup_code`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// The size of the code mappings advised.
    pub mapped_kib: u64,
    /// How much of them was resident just before.
    pub resident_before_kib: u64,
    /// And just after (what reading `/proc` and the advice themselves touched).
    pub resident_after_kib: u64,
}

/// Drop this process's resident pages of its own executable's code. Nothing is done (and zeros are
/// returned) where this is not Linux or `/proc` cannot be read.
///
/// It runs on the node loop, so it reads no more than it needs: the mappings' list
/// (`/proc/self/maps`), not their statistics (`smaps`, 1.5 MB for a daemon whose plugin pool has two
/// thousand mappings: 230 ms to read and parse twice in a debug build on a busy machine, a stalled tick
/// that made an active node answer 503 on `/active`), and the code's resident pages from
/// `/proc/self/pagemap`, 8 bytes a page.
pub fn release_startup_code() -> Released {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(exe) = std::fs::metadata("/proc/self/exe") else { return Released::default() };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Released::default() };
        let code = code_mappings(&maps, exe.ino());
        let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
        let resident = || pagemap.as_ref().map_or(0, |f| code.iter().map(|m| resident_pages_kib(f, m)).sum());
        let resident_before_kib = resident();
        let mut mapped = 0;
        for m in &code {
            // SAFETY: the range is a whole mapping of this process's executable, mapped read-only and
            // executable and never written (no text relocations in a Rust binary). MADV_DONTNEED on a
            // private file mapping only drops the page-table entries: the next access maps the same
            // file page again from the page cache, so code running on other threads meanwhile faults
            // and goes on.
            #[allow(unsafe_code)]
            let ok = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) } == 0;
            if ok {
                mapped += m.end - m.start;
            }
        }
        Released { mapped_kib: (mapped >> 10) as u64, resident_before_kib, resident_after_kib: resident() }
    }
    #[cfg(not(target_os = "linux"))]
    Released::default()
}

/// The kB of `mapping` that this process has mapped in (present in its page table), from its
/// `/proc/self/pagemap` (bit 63 of each page's 8-byte entry; readable without privilege). 0 if it
/// cannot be read.
#[cfg(target_os = "linux")]
fn resident_pages_kib(pagemap: &std::fs::File, mapping: &CodeMapping) -> u64 {
    use std::os::unix::fs::FileExt;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (first, pages) = (mapping.start / page, (mapping.end - mapping.start) / page);
    let mut entries = vec![0u8; pages * 8];
    if pagemap.read_exact_at(&mut entries, (first * 8) as u64).is_err() {
        return 0;
    }
    let present = entries.chunks_exact(8).filter(|e| e[7] & 0x80 != 0).count();
    (present * page / 1024) as u64
}

/// Give the heap's free memory back to the system (`malloc_trim`): after a plugin compile
/// (Cranelift's working memory, ~17 MiB for a 200 KiB plugin, freed when it ends) and at the end of
/// start-up.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` has no preconditions; it only releases free heap memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fix glibc's trim threshold at its default (128 KiB) instead of letting it grow with the largest
/// block freed (up to 64 MiB): a heap's free top over the threshold is given back when memory is
/// freed. Call before the process starts threads. Setting one stops glibc's adjusting of both, so the
/// `mmap` threshold stays at its default too: blocks over 128 KiB are mapped and unmapped on their own
/// rather than kept in the heap.
pub fn bound_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// One code mapping of the executable, from `/proc/PID/smaps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeMapping {
    pub start: usize,
    pub end: usize,
    pub rss_kib: u64,
}

/// The resident kB of `mappings`.
pub fn resident_kib(mappings: &[CodeMapping]) -> u64 {
    mappings.iter().map(|m| m.rss_kib).sum()
}

/// The `r-xp` mappings of the file with inode `ino` in a `/proc/PID/smaps` text, with their resident
/// size, or in a `/proc/PID/maps` text (the same header lines without the statistics: sizes 0).
pub fn code_mappings(smaps: &str, ino: u64) -> Vec<CodeMapping> {
    let mut found: Vec<CodeMapping> = Vec::new();
    let mut ours = false;
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(first), Some(second)) = (fields.next(), fields.next()) else { continue };
        if first == "Rss:" {
            if let (true, Some(m), Ok(kib)) = (ours, found.last_mut(), second.parse::<u64>()) {
                m.rss_kib += kib;
            }
        } else if !first.ends_with(':') {
            // A mapping's header: "START-END PERMS OFFSET DEV INODE [PATH]".
            let (perms, inode) = (second, fields.nth(2));
            let bounds = first.split_once('-').and_then(|(a, b)| Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?)));
            ours = false;
            if let Some((start, end)) = bounds.filter(|_| perms == "r-xp" && inode.and_then(|i| i.parse::<u64>().ok()) == Some(ino)) {
                found.push(CodeMapping { start, end, rss_kib: 0 });
                ours = true;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_code_mapping_is_chosen() {
        let smaps = "\
559dc8cb5000-559dc93c6000 r--p 00000000 fe:00 5589830    /usr/bin/vigil
Size:               7236 kB
Rss:                2796 kB
559dc93c6000-559dcaabd000 r-xp 00710000 fe:00 5589830    /usr/bin/vigil
Size:              23516 kB
Rss:               12516 kB
559dcaabd000-559dcab78000 r--p 01e06000 fe:00 5589830    /usr/bin/vigil
Rss:                 748 kB
559dcab78000-559dcab82000 rw-p 01ec0000 fe:00 5589830    /usr/bin/vigil
Rss:                  40 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 1234       /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1024 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                  12 kB
";
        let code = code_mappings(smaps, 5589830);
        assert_eq!(code, vec![CodeMapping { start: 0x559dc93c6000, end: 0x559dcaabd000, rss_kib: 12516 }]);
        assert_eq!(resident_kib(&code), 12516);
        assert!(code_mappings(smaps, 42).is_empty());
        // `/proc/PID/maps` is the same header lines without the statistics.
        let maps: String = smaps.lines().filter(|l| !l.ends_with("kB")).map(|l| format!("{l}\n")).collect();
        assert_eq!(code_mappings(&maps, 5589830), vec![CodeMapping { rss_kib: 0, ..code[0] }]);
    }

    #[test]
    fn the_code_mapping_is_released_and_the_process_runs_on() {
        // The release counts resident pages from pagemap; smaps counts the same pages (tests running
        // beside this one fault code in between the two reads: a margin).
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata("/proc/self/exe").unwrap().ino();
        let listed = code_mappings(&std::fs::read_to_string("/proc/self/maps").unwrap(), ino);
        let smaps = code_mappings(&std::fs::read_to_string("/proc/self/smaps").unwrap(), ino);
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let counted: u64 = listed.iter().map(|m| resident_pages_kib(&pagemap, m)).sum();
        let (stated, bounds) = (resident_kib(&smaps), |c: &[CodeMapping]| c.iter().map(|m| (m.start, m.end)).collect::<Vec<_>>());
        assert_eq!(bounds(&listed), bounds(&smaps));
        assert!(counted > 0 && counted.abs_diff(stated) <= stated / 4 + 256, "pagemap {counted} kB, smaps {stated} kB");

        let released = release_startup_code();
        assert!(released.mapped_kib > 0 && released.resident_before_kib > 0, "{released:?}");
        assert!(released.resident_before_kib <= released.mapped_kib, "{released:?}");
        // Code that was dropped runs again (from the page cache). How much stays out is measured on
        // the daemon, which runs nothing else (tests/pair.rs): tests beside this one fault code in.
        let mut v: Vec<u32> = (0..1000).rev().collect();
        v.sort();
        assert_eq!(v[0], 0);
        assert!(format!("{:?}", std::collections::BTreeMap::from([(1, "x")])).contains("x"));
    }
}
