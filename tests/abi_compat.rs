//! One `.so` for Envoy 1.38, 1.39 and 1.40 (issues #8, #15): the module may
//! import only functions every one of these binaries exports, or `dlopen`
//! fails on an older one (1.38.3 lacks the config-level metric callbacks
//! that 1.39 added, so the module looks those up at run time instead).

mod common;

use common::*;
use std::process::Command;

const VERSIONS: [&str; 3] = ["1.40.0", "1.39.3", "1.38.3"];

fn check(so: &std::path::Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/check-symbols.sh"))
        .arg(so)
        .args(VERSIONS)
        .output()
        .expect("run check-symbols.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn module_imports_only_functions_every_supported_envoy_exports() {
    let so = module_dir().join("libenvoy_redis_cluster.so");
    let (ok, text) = check(&so);
    assert!(ok, "symbol check failed:\n{text}");
    for v in VERSIONS {
        assert!(text.contains(&format!("Envoy {v} exports all")), "{text}");
    }
}

/// The check itself must catch a 1.40-only import and name it.
#[test]
fn symbol_check_names_a_function_the_older_envoy_lacks() {
    let dir = new_temp_dir("abi");
    let src = dir.join("bad.c");
    std::fs::write(
        &src,
        "extern void envoy_dynamic_module_callback_log_v2(void);\n\
         void use_it(void) { envoy_dynamic_module_callback_log_v2(); }\n",
    )
    .unwrap();
    let so = dir.join("libbad.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(built.success());
    let (ok, text) = check(&so);
    assert!(!ok, "check passed a module importing log_v2:\n{text}");
    assert!(text.contains("Envoy 1.39.3 lacks"), "{text}");
    assert!(text.contains("Envoy 1.38.3 lacks"), "{text}");
    assert!(text.contains("Envoy 1.40.0 exports all"), "{text}");
    assert!(
        text.contains("envoy_dynamic_module_callback_log_v2"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
