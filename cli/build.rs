//! Records the source revision, so bundles say which code trained them.

fn main() {
    let revision = std::process::Command::new("git")
        .args(["describe", "--always", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    if let Some(revision) = revision {
        println!("cargo:rustc-env=EDGEREC_REVISION={}", revision.trim());
    }
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
