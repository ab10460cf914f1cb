//! One TLS stack for every client in the process: rustls with the ring provider (see the workspace
//! `Cargo.toml` for why not aws-lc-rs).

/// Installs ring as the process-wide rustls provider; call before building any HTTPS client. Idempotent.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is installed already, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
