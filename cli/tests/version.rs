//! The built `drover` binary runs and reports its version (this test also makes
//! `cargo test --workspace` build the binary the end-to-end tests run).

#[test]
fn prints_version() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--version")
        .output()
        .expect("run drover");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("drover "), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}
