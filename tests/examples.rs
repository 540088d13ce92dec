//! Every shipped Envoy config (examples/ and envoy-config/standalone/) is
//! accepted by real Envoy with the module loaded (`--mode validate` runs the
//! module's config parsing).

mod common;

use common::*;

#[test]
fn shipped_standalone_configs_are_accepted_by_envoy() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["examples", "envoy-config/standalone"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(
        files.len() >= 4,
        "expected the examples and standalone configs: {files:?}"
    );
    for f in files {
        let yaml = std::fs::read_to_string(&f).unwrap();
        let (ok, out) = Envoy::validate(&yaml);
        assert!(ok, "{} rejected:\n{out}", f.display());
    }
}
