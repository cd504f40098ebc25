//! This build's version, as the CLI prints it and a state records it.

/// This vethfp's version (the workspace version, e.g. `0.2.0-dev`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (12 hex digits), or "unknown".
pub const GIT_COMMIT: &str = env!("VETHFP_GIT_COMMIT");
/// `VERSION (commit GIT_COMMIT)`: what `vethfp --version` prints and a state records.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VETHFP_GIT_COMMIT"),
    ")"
);
