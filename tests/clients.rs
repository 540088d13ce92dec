//! Real client libraries through the proxy: redis-py's `redis.Redis` (with
//! its default settings, RESP3 and RESP2) and `redis.cluster.RedisCluster`
//! (which discovers the proxy as a one-node cluster), driven by
//! tests/clients/redis_py_check.py; and a job queue on redis-py's blocking
//! calls (tests/clients/redis_py_queue.py); the job-queue libraries BullMQ
//! (tests/clients/node/bullmq_check.js) and Celery (tests/clients/celery/),
//! and a plain ioredis client (tests/clients/node/ioredis_check.js).
//!
//! Needs python3 with redis-py and Celery, and node with the packages of
//! tests/clients/node, all of which scripts/install.sh installs; without them
//! a test fails, saying so.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::process::{Child, Command, Stdio};

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
    let args = [
        script.display().to_string(),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
    ];
    run_check("redis_py_check.py", "python3", &args);
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
    let args = [
        script.display().to_string(),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
    ];
    run_check("redis_py_queue.py", "python3", &args);
}

/// redis-py's `PubSub` (RESP2 and RESP3): subscribe, psubscribe and
/// ssubscribe, messages published through the proxy and on a node, the
/// unsubscribe acks, `run_in_thread`.
#[test]
fn redis_py_pubsub_through_the_proxy() {
    require_redis_py();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let script = repo_root().join("tests/clients/redis_py_pubsub.py");
    let args = [
        script.display().to_string(),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
        cluster.master_ports()[0].to_string(),
    ];
    run_check("redis_py_pubsub.py", "python3", &args);
}

/// Run a check script (at most 300 s); it must exit 0 and print OK last.
fn run_check(what: &str, program: &str, args: &[String]) {
    let out = Command::new("timeout")
        .arg("300")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("OK"),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// node runs and tests/clients/node/node_modules holds bullmq and ioredis at
/// the versions package.json pins; else fail, naming scripts/install.sh.
fn require_node_packages() {
    let dir = repo_root().join("tests/clients/node");
    let out = Command::new("node")
        .current_dir(&dir)
        .args([
            "-e",
            "const deps = require('./package.json').dependencies;\
             for (const [n, v] of Object.entries(deps)) {\
               const got = require(`${n}/package.json`).version;\
               if (got !== v) throw new Error(`${n} ${got} installed, ${v} pinned`);\
             }",
        ])
        .output()
        .unwrap_or_else(|e| panic!("node cannot be run ({e}); run scripts/install.sh"));
    assert!(
        out.status.success(),
        "the node packages of tests/clients/node are missing; run scripts/install.sh:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn node_script(name: &str) -> String {
    repo_root()
        .join("tests/clients/node")
        .join(name)
        .display()
        .to_string()
}

/// BullMQ's Queue adds jobs (prefix `{bull}`: one slot for all of a queue's
/// keys), Workers blocked in BZPOPMIN through the proxy process them: each
/// job exactly once with its result, a delayed job after its delay, a
/// failing job retried, the queue drained; RESP2 and RESP3 connections.
#[test]
fn bullmq_queue_and_workers_through_the_proxy() {
    require_node_packages();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let args = [
        node_script("bullmq_check.js"),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
        envoy.admin_port().to_string(),
    ];
    run_check("bullmq_check.js", "node", &args);
    drop(envoy);
    drop(cluster);
}

/// A plain ioredis client, RESP2 and RESP3: pipelines over every master,
/// MULTI/EXEC and WATCH, BLPOP's timeout, clients blocked while another
/// pushes, BRPOP/BLMOVE/BZPOPMIN/XREAD BLOCK, CROSSSLOT.
#[test]
fn ioredis_pipelines_transactions_and_blocking_through_the_proxy() {
    require_node_packages();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let args = [
        node_script("ioredis_check.js"),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
        envoy.admin_port().to_string(),
    ];
    run_check("ioredis_check.js", "node", &args);
    drop(envoy);
    drop(cluster);
}

/// ioredis subscribers: the message, pmessage and smessage events, from
/// the proxy and from a node.
#[test]
fn ioredis_pubsub_through_the_proxy() {
    require_node_packages();
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let args = [
        node_script("ioredis_pubsub.js"),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
        cluster.master_ports()[0].to_string(),
    ];
    run_check("ioredis_pubsub.js", "node", &args);
}

/// A Celery worker process (`--pool=solo`), killed by PID when dropped, so
/// also when the test fails. Its output goes to `log`.
struct CeleryWorker {
    child: Child,
    log: std::path::PathBuf,
}

impl CeleryWorker {
    fn start(name: &str, broker: &str, dir: &std::path::Path) -> CeleryWorker {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).expect("create worker log");
        let err = file.try_clone().expect("clone worker log");
        let child = Command::new("python3")
            .current_dir(repo_root().join("tests/clients/celery"))
            .env("CELERY_CHECK_BROKER", broker)
            .args(["-m", "celery", "-A", "celery_app", "worker", "--pool=solo"])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["-n", &format!("{name}@%h"), "-l", "info"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("start celery worker");
        CeleryWorker { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        // Our own child, by PID; solo pool: no processes of its own.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Celery with broker and Redis result backend through the proxy (keys
/// under one hash tag; results announced by PUBLISH, awaited on SUBSCRIBE),
/// two workers in BRPOP: every task's result comes back with .get(timeout),
/// each task runs once, a retried task succeeds, the queue drains.
#[test]
fn celery_workers_and_tasks_through_the_proxy() {
    let out = Command::new("python3")
        .args(["-c", "import celery, kombu.transport.redis"])
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); run scripts/install.sh"));
    assert!(
        out.status.success(),
        "python3 cannot import celery with kombu's redis transport; run scripts/install.sh:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let broker = format!("redis://127.0.0.1:{}/0", envoy.port());
    let dir = new_temp_dir("celery");
    let workers: Vec<CeleryWorker> = ["w1", "w2"]
        .iter()
        .map(|n| CeleryWorker::start(n, &broker, &dir))
        .collect();
    let script = repo_root().join("tests/clients/celery/celery_check.py");
    let args = [
        script.display().to_string(),
        "127.0.0.1".to_string(),
        envoy.port().to_string(),
        envoy.admin_port().to_string(),
        workers.len().to_string(),
    ];
    let result = std::panic::catch_unwind(|| run_check("celery_check.py", "python3", &args));
    if result.is_err() {
        for w in &workers {
            eprintln!("--- celery worker log {}\n{}", w.log.display(), w.log());
        }
    }
    drop(workers);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    drop(envoy);
    drop(cluster);
}
