//! A node whose wall clock is off: libfaketime preloaded into its process (`.ci/run` installs Debian's
//! `faketime`), with the monotonic clock left alone so that timeouts and intervals stay real.

/// Where Debian's package puts the multi-threaded library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that shifts a process's wall clock by `offset` (libfaketime's syntax, e.g.
/// `"+40s"`), or `None` (with a line saying the test is skipped) where libfaketime is not installed.
pub fn skewed_clock(offset: &str) -> Option<Vec<(String, String)>> {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        println!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return None;
    }
    Some(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}
