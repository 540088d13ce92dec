//! Real client libraries through the proxy: redis-py's `redis.Redis` (with
//! its default settings, RESP3 and RESP2) and `redis.cluster.RedisCluster`
//! (which discovers the proxy as a one-node cluster), driven by
//! tests/clients/redis_py_check.py.
//!
//! Skipped (with a message) only when python3 is missing; redis-py is
//! installed with pip when absent.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("python3")
}

fn has_redis_py(py: &str) -> bool {
    Command::new(py)
        .args(["-c", "import redis, redis.cluster"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// redis-py importable, installing it with pip if needed.
fn ensure_redis_py(py: &str) {
    if has_redis_py(py) {
        return;
    }
    let out = Command::new(py)
        .args(["-m", "pip", "install", "-q", "redis"])
        .output()
        .expect("run pip");
    assert!(
        has_redis_py(py),
        "redis-py is missing and `{py} -m pip install redis` did not provide it:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn redis_py_plain_and_cluster_clients_work_through_the_proxy() {
    let Some(py) = python() else {
        eprintln!("SKIPPED: python3 is not installed; redis-py client test not run");
        return;
    };
    ensure_redis_py(py);
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let script = repo_root().join("tests/clients/redis_py_check.py");
    let out = Command::new("timeout")
        .arg("300")
        .arg(py)
        .arg(&script)
        .arg("127.0.0.1")
        .arg(envoy.port().to_string())
        .output()
        .expect("run redis_py_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("OK"),
        "redis_py_check.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    drop(envoy);
    drop(cluster);
}
