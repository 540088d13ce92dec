//! Real client libraries through the proxy: redis-py's `redis.Redis` (with
//! its default settings, RESP3 and RESP2) and `redis.cluster.RedisCluster`
//! (which discovers the proxy as a one-node cluster), driven by
//! tests/clients/redis_py_check.py; and a job queue on redis-py's blocking
//! calls (tests/clients/redis_py_queue.py).
//!
//! Needs python3 with redis-py, which scripts/install.sh installs; without
//! either the test fails, saying so.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

/// python3 can import redis-py; else fail, naming what is missing.
fn require_redis_py() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import redis, redis.cluster; print(redis.__version__)",
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); run scripts/install.sh"));
    assert!(
        out.status.success(),
        "python3 cannot import redis-py; run scripts/install.sh:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn redis_py_plain_and_cluster_clients_work_through_the_proxy() {
    require_redis_py();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let script = repo_root().join("tests/clients/redis_py_check.py");
    let out = Command::new("timeout")
        .arg("300")
        .arg("python3")
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

/// Workers in redis-py `brpop` / `blmove` / `bzpopmin` / `xreadgroup(block=…)`
/// loops while a producer adds jobs: each job processed exactly once, RESP2
/// and RESP3.
#[test]
fn redis_py_job_queue_workers_block_through_the_proxy() {
    require_redis_py();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let script = repo_root().join("tests/clients/redis_py_queue.py");
    let out = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg(&script)
        .arg("127.0.0.1")
        .arg(envoy.port().to_string())
        .output()
        .expect("run redis_py_queue.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("OK"),
        "redis_py_queue.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
