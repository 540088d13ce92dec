//! The deployment configs under envoy-config/ (issue #6), proven for real.
//!
//! - `manifests_parse_and_validate_against_their_crds`: every YAML parses and
//!   every custom resource validates against its published CRD
//!   (tests/mesh/validate.py check, against the CRD schemas in
//!   tests/mesh/crds).
//! - One test per deployment: the listener that the mesh would hand to Envoy
//!   is rendered by tests/mesh/validate.py (Envoy Gateway's generated TCP
//!   listener with the EnvoyPatchPolicy's JSON patch applied; an Istio
//!   outbound listener with the EnvoyFilter's REPLACE applied; the standalone
//!   bootstrap), localized (loopback ports, the seeds of a loopback Redis
//!   Cluster and of a loopback standalone mirror, the local module path), and
//!   run in real Envoy with the module. A plain client then checks sharding
//!   (keys on their owning masters), read/write splitting (GETs counted on
//!   replicas with `INFO commandstats`, none on masters) and mirroring
//!   (writes on the mirror, reads not).
//!
//! MODULE-DEPENDENT (needs `cargo build`), and needs python3 with PyYAML,
//! jsonschema, jsonpatch and cel-python (scripts/install.sh installs them;
//! without them these tests fail).

mod common;

use common::*;
use redis::Commands;
use serde_json::{json, Value as Json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Run tests/mesh/validate.py with one subcommand; (success, stdout, stderr).
fn validate_py(cmd: &str) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/mesh/validate.py"))
        .arg(cmd)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run python3 tests/mesh/validate.py");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON that `validate.py <cmd>` renders.
fn render(cmd: &str) -> Json {
    let (ok, stdout, stderr) = validate_py(cmd);
    assert!(ok, "validate.py {cmd} failed:\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("validate.py {cmd}: bad JSON: {e}"))
}

/// A standalone (non-cluster) redis-server on a free loopback port, killed
/// (by PID) on drop.
struct Mirror {
    port: u16,
    child: Child,
}

impl Mirror {
    fn start() -> Mirror {
        let port = alloc_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let m = Mirror { port, child };
        assert!(
            wait_until(Duration::from_secs(10), || try_connect(port).is_ok()),
            "mirror redis on {port} does not answer"
        );
        m
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every filter of the listener that loads our module.
fn module_filters(listener: &mut Json) -> Vec<&mut Json> {
    let mut out = Vec::new();
    if let Some(chains) = listener["filter_chains"].as_array_mut() {
        for chain in chains {
            if let Some(filters) = chain["filters"].as_array_mut() {
                for f in filters {
                    if f["name"] == "envoy.filters.network.dynamic_modules" {
                        out.push(f);
                    }
                }
            }
        }
    }
    out
}

/// Point a rendered listener at this machine: bind 127.0.0.1:`port`, the
/// module's `main` seeds at `cluster`, its `mirror` seed at the standalone
/// mirror, and a `module.local.filename` at the locally built .so (a
/// by-name module is found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which
/// the harness sets). Nothing else is changed.
fn localize(listener: &mut Json, port: u16, cluster: &Cluster, mirror_port: u16) {
    listener["address"] =
        json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
    // Istio's outbound listeners are not bound themselves (the virtual
    // listener on 15001 hands them connections); here the test connects
    // straight to it.
    if let Some(obj) = listener.as_object_mut() {
        obj.remove("bind_to_port");
    }
    let so = module_dir().join(format!("lib{MODULE_NAME}.so"));
    let filters = module_filters(listener);
    assert_eq!(filters.len(), 1, "expected one module filter");
    for f in filters {
        let tc = &mut f["typed_config"];
        if tc["dynamic_module_config"]["module"]["local"]["filename"].is_string() {
            tc["dynamic_module_config"]["module"]["local"]["filename"] =
                json!(so.display().to_string());
        }
        let cfg = &mut tc["filter_config"]["value"];
        assert!(cfg["clusters"]["main"].is_object(), "no cluster 'main'");
        assert!(cfg["clusters"]["mirror"].is_object(), "no cluster 'mirror'");
        cfg["clusters"]["main"]["seeds"] = json!(cluster.seeds());
        cfg["clusters"]["mirror"]["seeds"] = json!([format!("127.0.0.1:{mirror_port}")]);
    }
}

/// `base` (or an empty bootstrap) with admin on 127.0.0.1:`admin_port` and
/// `listener` as its only listener.
fn bootstrap_with(base: Option<Json>, listener: Json, admin_port: u16) -> Json {
    let mut b = base.unwrap_or_else(|| json!({}));
    b["admin"] = json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } });
    b["static_resources"]["listeners"] = json!([listener]);
    b
}

/// Sharding, read/write splitting and mirroring through the proxy on
/// `envoy`, for a deployment whose read policy is PREFER_REPLICA and whose
/// catch-all route mirrors writes to `mirror`.
fn check_deployment(what: &str, cluster: &Cluster, mirror: &Mirror, envoy: &Envoy) {
    let masters = cluster.master_ports();
    let replicas: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|p| !masters.contains(p))
        .collect();
    assert_eq!(masters.len(), 3);
    assert_eq!(replicas.len(), 3);
    let keys = keys(&format!("mesh-{what}"), 60);
    reset_stats(&cluster.ports());
    reset_stats(&[mirror.port]);

    // Writes, through the proxy.
    let mut c = envoy.client();
    for (i, k) in keys.iter().enumerate() {
        let _: () = c
            .set(k, i)
            .unwrap_or_else(|e| panic!("{what}: SET {k}: {e}"));
    }

    // Sharding: every key is on the master that owns its slot, and every
    // master got some.
    for (i, k) in keys.iter().enumerate() {
        let owner = cluster.node_for_key(k.as_bytes());
        let v: Option<usize> = connect(owner).get(k).expect("GET on the owner");
        assert_eq!(
            v,
            Some(i),
            "{what}: {k} is not on its owning master {owner}"
        );
    }
    let sets: Vec<u64> = masters.iter().map(|&p| calls(p, "set")).collect();
    assert_eq!(
        sets.iter().sum::<u64>(),
        60,
        "{what}: SETs on masters {sets:?}"
    );
    assert!(
        sets.iter().all(|&n| n > 0),
        "{what}: writes not spread over all masters: {sets:?}"
    );
    // (Replicas count the SETs too, as they apply the replication stream.)

    // Read/write splitting: replicas must have the writes first.
    for &m in &masters {
        let _: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(2000)
            .query(&mut connect(m))
            .unwrap_or(0);
    }
    reset_stats(&cluster.ports());
    for _ in 0..5 {
        for (i, k) in keys.iter().enumerate() {
            let v: usize = c.get(k).unwrap_or_else(|e| panic!("{what}: GET {k}: {e}"));
            assert_eq!(v, i, "{what}: GET {k}");
        }
    }
    let on_masters: Vec<u64> = masters.iter().map(|&p| calls(p, "get")).collect();
    let on_replicas: Vec<u64> = replicas.iter().map(|&p| calls(p, "get")).collect();
    assert_eq!(
        on_masters.iter().sum::<u64>(),
        0,
        "{what}: PREFER_REPLICA reads reached masters: {on_masters:?}"
    );
    assert_eq!(
        on_replicas.iter().sum::<u64>(),
        300,
        "{what}: GETs on replicas {on_replicas:?}"
    );
    assert!(
        on_replicas.iter().all(|&n| n > 0),
        "{what}: reads not spread over all replicas: {on_replicas:?}"
    );

    // Mirroring: every write reached the mirror, no read did. (Counted
    // before this test reads the mirror itself.)
    let mport = mirror.port;
    let mirrored = wait_until(Duration::from_secs(5), || calls(mport, "set") >= 60);
    assert!(
        mirrored,
        "{what}: the mirror saw {} of 60 SETs",
        calls(mport, "set")
    );
    assert_eq!(calls(mport, "set"), 60, "{what}: SETs on the mirror");
    assert_eq!(calls(mport, "get"), 0, "{what}: reads were mirrored");
    let mut m = connect(mport);
    for (i, k) in keys.iter().enumerate() {
        let v: Option<usize> = m.get(k).unwrap();
        assert_eq!(v, Some(i), "{what}: {k} not on the mirror");
    }
}

/// Start Envoy with `listener` (already rendered) in front of a fresh
/// cluster and mirror, and run the checks.
fn run_listener(what: &str, base: Option<Json>, mut listener: Json) {
    let cluster = Cluster::start(3, 1);
    let mirror = Mirror::start();
    let (port, admin_port) = (alloc_port(), alloc_port());
    localize(&mut listener, port, &cluster, mirror.port);
    let bootstrap = bootstrap_with(base, listener, admin_port);
    let envoy = Envoy::start_bootstrap(ProxyKind::Module, &bootstrap, port, admin_port);
    check_deployment(what, &cluster, &mirror, &envoy);
}

#[test]
fn manifests_parse_and_validate_against_their_crds() {
    let (ok, stdout, stderr) = validate_py("check");
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(ok, "validate.py check failed:\n{stdout}\n{stderr}");
}

/// Envoy Gateway: its generated TCP listener + the EnvoyPatchPolicy's JSON
/// patch, in real Envoy.
#[test]
fn envoy_gateway_patched_listener_shards_splits_reads_and_mirrors() {
    let listener = render("render-eg");
    assert_eq!(listener["name"], "redis-demo/redis-gateway/redis");
    run_listener("eg", None, listener);
}

/// Istio sidecar: an outbound listener for redis-cluster:6379 with the
/// EnvoyFilter's REPLACE applied, in real Envoy.
#[test]
fn istio_envoyfilter_listener_shards_splits_reads_and_mirrors() {
    let listener = render("render-istio");
    assert!(
        listener["name"].as_str().unwrap().ends_with("_6379"),
        "{}",
        listener["name"]
    );
    // The filter before the replaced tcp_proxy is still there.
    assert_eq!(
        listener["filter_chains"][0]["filters"][0]["name"],
        "envoy.filters.network.local_ratelimit"
    );
    run_listener("istio", None, listener);
}

/// envoy-config/standalone/envoy-rw-split-mirror.yaml as it is, but for the
/// admin and listener ports and the seeds.
#[test]
fn standalone_rw_split_mirror_bootstrap_shards_splits_reads_and_mirrors() {
    let mut boot = render("render-standalone");
    let listeners = boot["static_resources"]["listeners"]
        .as_array()
        .expect("listeners")
        .len();
    assert_eq!(listeners, 1, "one listener expected");
    let listener = boot["static_resources"]["listeners"][0].take();
    run_listener("standalone", Some(boot), listener);
}
