//! Upstream TLS against a real Redis Cluster serving TLS only (Debian's
//! redis-server is built with TLS), with certificates made by openssl here.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl {args:?} failed");
}

/// A CA and, signed by it, a server certificate for 127.0.0.1 and a client
/// certificate; `name` prefixes the files.
fn make_pki(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
    );
    for (who, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let key = format!("{name}-{who}.key");
        let csr = format!("{name}-{who}.csr");
        let crt = format!("{name}-{who}.crt");
        let extfile = format!("{name}-{who}.ext");
        std::fs::write(dir.join(&extfile), format!("{ext}\n")).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={who}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &crt,
            ],
        );
    }
}

/// Three TLS-only masters forming a cluster; killed on drop.
struct TlsCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let dir = new_temp_dir("tls");
        make_pki(&dir, "good");
        make_pki(&dir, "other");
        let ports = alloc_ports(3);
        let f = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let mut children = Vec::new();
        for &p in &ports {
            let node_dir = dir.join(p.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &p.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &(p + 50).to_string(),
                ])
                .args([
                    "--cluster-config-file",
                    &node_dir.join("nodes.conf").to_string_lossy(),
                ])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args([
                    "--tls-cert-file",
                    &f("good-server.crt"),
                    "--tls-key-file",
                    &f("good-server.key"),
                ])
                .args([
                    "--tls-ca-cert-file",
                    &f("good-ca.crt"),
                    "--tls-auth-clients",
                    "yes",
                ])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &node_dir.to_string_lossy(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            children.push(child);
        }
        let c = TlsCluster {
            dir,
            ports,
            children,
        };
        assert!(wait_until(Duration::from_secs(10), || c
            .cli(c.ports[0], &["ping"])
            .contains("PONG")));
        let mut args: Vec<String> = c.tls_args();
        args.push("--cluster".into());
        args.push("create".into());
        args.extend(c.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.push("--cluster-yes".into());
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(wait_until(Duration::from_secs(20), || c.ports.iter().all(
            |&p| c.cli(p, &["cluster", "info"]).contains("cluster_state:ok")
        )));
        c
    }

    fn file(&self, n: &str) -> String {
        self.dir.join(n).to_string_lossy().into_owned()
    }

    fn tls_args(&self) -> Vec<String> {
        [
            "--tls",
            "--cacert",
            &self.file("good-ca.crt"),
            "--cert",
            &self.file("good-client.crt"),
            "--key",
            &self.file("good-client.key"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(self.tls_args())
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn config(&self, tls: serde_json::Value) -> serde_json::Value {
        json!({
            "stat_prefix": "tls",
            "settings": { "op_timeout": "2s" },
            "clusters": { "main": {
                "seeds": self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>(),
                "tls": tls,
            } },
            "prefix_routes": { "catch_all_route": { "cluster": "main" } },
        })
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn tls_cluster_is_served_and_verified() {
    let cluster = TlsCluster::start();

    // Right CA and client certificate: everything works, keys land on the
    // owning node (checked directly over TLS).
    let good = Envoy::start(cluster.config(json!({
        "ca_file": cluster.file("good-ca.crt"),
        "cert_file": cluster.file("good-client.crt"),
        "key_file": cluster.file("good-client.key"),
    })));
    let mut c = RawClient::connect(good.port());
    for i in 0..30 {
        assert_eq!(
            c.cmd(&["SET", &format!("t{i}"), &format!("v{i}")]),
            Resp::ok()
        );
    }
    assert_eq!(c.cmd(&["GET", "t7"]), Resp::bulk("v7"));
    let r = c.cmd(&["MGET", "t1", "t2", "t3"]);
    assert_eq!(
        r,
        Resp::Array(vec![Resp::bulk("v1"), Resp::bulk("v2"), Resp::bulk("v3")])
    );
    let owner_has_it = cluster
        .ports
        .iter()
        .any(|&p| cluster.cli(p, &["get", "t7"]).trim() == "v7");
    assert!(owner_has_it, "t7 not found on any node over TLS");

    // A CA that did not sign the nodes: verification fails, the client gets
    // an error (within op_timeout), never plaintext and never a hang.
    let wrong_ca = Envoy::start(cluster.config(json!({
        "ca_file": cluster.file("other-ca.crt"),
        "cert_file": cluster.file("good-client.crt"),
        "key_file": cluster.file("good-client.key"),
    })));
    let mut c = RawClient::connect(wrong_ca.port());
    c.set_timeout(Duration::from_secs(10));
    assert!(c.cmd(&["GET", "t7"]).is_error(), "unverified node was used");

    // No client certificate, but the nodes require one: errors.
    let no_cert = Envoy::start(cluster.config(json!({ "ca_file": cluster.file("good-ca.crt") })));
    let mut c = RawClient::connect(no_cert.port());
    c.set_timeout(Duration::from_secs(10));
    assert!(
        c.cmd(&["GET", "t7"]).is_error(),
        "node without client cert answered"
    );
}

#[test]
fn bad_tls_config_is_refused_at_load() {
    let yaml = |tls: &str| {
        format!(
            r#"
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.dynamic_modules
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter
          dynamic_module_config: {{ name: envoy_redis_cluster }}
          filter_name: redis_cluster
          terminal_filter: true
          filter_config:
            "@type": type.googleapis.com/google.protobuf.Struct
            value:
              clusters: {{ main: {{ seeds: ["127.0.0.1:7000"], tls: {tls} }} }}
              prefix_routes: {{ catch_all_route: {{ cluster: main }} }}
"#
        )
    };
    let (ok, out) = Envoy::validate(&yaml("{ ca_file: /nonexistent/ca.pem }"));
    assert!(!ok, "missing CA accepted");
    assert!(
        out.contains("clusters.main.tls"),
        "error does not name the field:\n{out}"
    );
    let (ok, _) = Envoy::validate(&yaml("{ cert_file: /x.pem }"));
    assert!(!ok, "cert without key accepted");
    let (ok, _) = Envoy::validate(&yaml("{ verify: false }"));
    assert!(!ok, "unknown field accepted");
}
