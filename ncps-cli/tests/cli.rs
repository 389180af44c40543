//! Runs the ncps-cli binary.

use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_ncps-cli");

#[test]
fn generated_keys_sign_and_verify_narinfos() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("sk"), dir.path().join("pk"));
    let out = Command::new(CLI)
        .args(["generate-key", "test-1"])
        .arg(&sk)
        .arg(&pk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret: ncps_core::SigningKey = std::fs::read_to_string(&sk).unwrap().parse().unwrap();
    let public = std::fs::read_to_string(&pk).unwrap();
    assert_eq!(secret.public_key().to_string(), public);

    let mut info: ncps_core::NarInfo = "StorePath: /nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-hello\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q\nNarSize: 5\nReferences: \n"
        .parse()
        .unwrap();
    let file = dir.path().join("x.narinfo");
    std::fs::write(&file, info.to_string()).unwrap();
    let unsigned = Command::new(CLI)
        .arg("verify-narinfo")
        .arg(&file)
        .args(["--public-key", &public])
        .output()
        .unwrap();
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("no valid signature"));

    info.sign(&secret);
    std::fs::write(&file, info.to_string()).unwrap();
    let signed = Command::new(CLI)
        .arg("verify-narinfo")
        .arg(&file)
        .args(["--public-key", &public])
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&signed.stdout)
            .contains("fingerprint: 1;/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-hello;")
    );

    // An existing secret key is never overwritten.
    let again = Command::new(CLI)
        .args(["generate-key", "test-1"])
        .arg(&sk)
        .arg(&pk)
        .output()
        .unwrap();
    assert!(!again.status.success());
}
