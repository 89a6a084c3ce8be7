//! A test whose assets are missing fails with the command that provides them; it is skipped only
//! when the user opts out with HEADROOM_SKIP_ASSET_TESTS=1 (before, such tests returned early and
//! passed, so a machine without the assets reported a green run that had checked nothing).

mod common;

use std::path::PathBuf;

#[test]
fn missing_asset_fails_with_the_command_unless_opted_out() {
    let missing = PathBuf::from("/nonexistent/headroom-test-asset.gguf");
    let present = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // One test function: the environment variable is process-wide.
    std::env::remove_var("HEADROOM_SKIP_ASSET_TESTS");
    assert_eq!(common::require_asset(present.clone(), "x"), Some(present.clone()));
    let err = std::panic::catch_unwind(|| common::require_asset(missing.clone(), "headroom fetch --data")).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("/nonexistent/headroom-test-asset.gguf") && msg.contains("run `headroom fetch --data` first"), "{msg}");
    assert!(msg.contains("HEADROOM_SKIP_ASSET_TESTS=1"), "{msg}");

    std::env::set_var("HEADROOM_SKIP_ASSET_TESTS", "1");
    assert_eq!(common::require_asset(missing, "headroom fetch --data"), None);
    assert_eq!(common::require_asset(present.clone(), "x"), Some(present));
    std::env::remove_var("HEADROOM_SKIP_ASSET_TESTS");
}
