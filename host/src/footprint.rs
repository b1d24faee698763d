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
//! few ticks later (the kernel maps 64 KiB around each faulting page), RSS 21.3 → 18.3 MiB.
//!
//! Only the executable's code (`r-xp`) is dropped: it is never written, so `MADV_DONTNEED` on it
//! loses nothing. Read-only data is left alone (its RELRO part was written by the dynamic linker
//! before it became read-only, and dropping it would revert that).

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
pub fn release_startup_code() -> Released {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(exe) = std::fs::metadata("/proc/self/exe") else { return Released::default() };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Released::default() };
        let resident_before_kib = std::fs::read_to_string("/proc/self/smaps").map(|s| resident_code_kib(&s, exe.ino())).unwrap_or(0);
        let mut mapped = 0;
        for (start, end) in code_mappings(&maps, exe.ino()) {
            // SAFETY: the range is a whole mapping of this process's executable, mapped read-only and
            // executable and never written (no text relocations in a Rust binary). MADV_DONTNEED on a
            // private file mapping only drops the page-table entries: the next access maps the same
            // file page again from the page cache, so code running on other threads meanwhile faults
            // and goes on.
            #[allow(unsafe_code)]
            let ok = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0;
            if ok {
                mapped += end - start;
            }
        }
        let resident_after_kib = std::fs::read_to_string("/proc/self/smaps").map(|s| resident_code_kib(&s, exe.ino())).unwrap_or(0);
        Released { mapped_kib: (mapped >> 10) as u64, resident_before_kib, resident_after_kib }
    }
    #[cfg(not(target_os = "linux"))]
    Released::default()
}

/// The resident kB of the `r-xp` mappings of the file with inode `ino`, in a `/proc/PID/smaps` text.
pub fn resident_code_kib(smaps: &str, ino: u64) -> u64 {
    let mut total = 0;
    let mut ours = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            // A mapping's header: "START-END PERMS OFFSET DEV INODE [PATH]".
            Some(first) if first.contains('-') && !first.ends_with(':') && fields.len() >= 5 => {
                ours = fields[1] == "r-xp" && fields[4].parse::<u64>().ok() == Some(ino);
            }
            Some(&"Rss:") if ours => total += fields.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// The `r-xp` mappings of the file with inode `ino` in a `/proc/PID/maps` text, as address ranges.
fn code_mappings(maps: &str, ino: u64) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // "START-END PERMS OFFSET DEV INODE PATH"
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let inode = fields.nth(2)?.parse::<u64>().ok()?;
            if perms != "r-xp" || inode != ino {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_code_mapping_is_chosen() {
        let maps = "\
559dc8cb5000-559dc93c6000 r--p 00000000 fe:00 5589830    /usr/bin/vigil
559dc93c6000-559dcaabd000 r-xp 00710000 fe:00 5589830    /usr/bin/vigil
559dcaabd000-559dcab78000 r--p 01e06000 fe:00 5589830    /usr/bin/vigil
559dcab78000-559dcab82000 rw-p 01ec0000 fe:00 5589830    /usr/bin/vigil
7f0000000000-7f0000100000 r-xp 00000000 fe:00 1234       /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
";
        assert_eq!(code_mappings(maps, 5589830), vec![(0x559dc93c6000, 0x559dcaabd000)]);
        assert!(code_mappings(maps, 42).is_empty());
    }

    #[test]
    fn the_code_mapping_is_released_and_the_process_runs_on() {
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
