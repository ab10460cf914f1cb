// See host/Cargo.toml: the hot path allocates per event, and mimalloc is much faster at it than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t`, mimalloc v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // mimalloc keeps freed memory for a second (v3's default purge delay) before giving it back. A commit
    // frees tens of MB at once (the plugin-state blob, Parquet buffers), and keeping them made peak RSS of
    // the 1M-event pipeline bench ~120 MB higher (797 against 674 MB), for no throughput. Give it back at
    // once, unless MIMALLOC_PURGE_DELAY says otherwise.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    // mimalloc asks for transparent huge pages on its arenas, so each purge splits a 2 MiB page and the next
    // allocation there faults in (and zeroes) a whole one again. Without them the 1M-event bench peaked at
    // 392/398 MB instead of 430/435 MB (same-hour pairs), at the same speed. mimalloc's own switch
    // (MIMALLOC_ALLOW_THP=0) only works from the environment: its first arena exists before `main`, so the
    // process turns THP off for itself, unless MIMALLOC_ALLOW_THP asks for them.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments only; it changes no memory this process holds.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    weir::cli::main()
}
