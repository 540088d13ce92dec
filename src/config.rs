//! The filter's JSON configuration.
//!
//! Envoy hands a dynamic-module filter its configuration as bytes; here they
//! are the JSON rendering of a `google.protobuf.Struct`, so key order is not
//! preserved, integers arrive without `.0`, and durations are protobuf JSON
//! strings (`"5s"`, `"0.25s"`). Field names follow Envoy's `RedisProxy`
//! filter wherever the concept is the same, so an existing Envoy Redis config
//! carries over with few edits:
//!
//! ```json
//! {"stat_prefix": "redis",
//!  "settings": {"op_timeout": "5s", "read_policy": "PREFER_REPLICA"},
//!  "clusters": {"main": {"seeds": ["10.0.0.1:7000", "redis-0.redis:6379"]}},
//!  "prefix_routes": {"routes": [{"prefix": "user:", "cluster": "main"}],
//!                    "catch_all_route": {"cluster": "main"}}}
//! ```
//!
//! Unknown fields are rejected everywhere (a typo must not silently fall back
//! to a default), and every error names the offending field's path, e.g.
//! `clusters.main.seeds: at least one seed is required`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A configuration error; the message starts with the field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole filter configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every statistic the filter emits. Default `"redis"`.
    #[serde(default = "default_stat_prefix")]
    pub stat_prefix: String,
    /// Connection-pool and routing settings shared by all clusters.
    #[serde(default)]
    pub settings: Settings,
    /// Upstream Redis Clusters by name (at least one).
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Which cluster serves which key prefix.
    #[serde(default)]
    pub prefix_routes: PrefixRoutes,
    /// Username clients must `AUTH` with (Redis 6 ACL style); `None` means
    /// the `AUTH password` form. Plain string or `{"inline_string": ...}`.
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub downstream_auth_username: Option<String>,
    /// Passwords clients may `AUTH` with; empty means no client auth. Each
    /// is a plain string or Envoy's `{"inline_string": ...}` data source.
    #[serde(default, deserialize_with = "de_secrets")]
    pub downstream_auth_passwords: Vec<String>,
}

fn default_stat_prefix() -> String {
    "redis".to_string()
}

/// Settings shared by every cluster (Envoy's `ConnPoolSettings`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How long one command may wait for its reply. Default 5s.
    #[serde(deserialize_with = "de_duration")]
    pub op_timeout: Duration,
    /// Follow `MOVED`/`ASK` redirections. Default true.
    pub enable_redirection: bool,
    /// Honour `{hash tags}` when computing slots. Default true.
    pub enable_hashtagging: bool,
    /// Where reads go by default. Default `MASTER`.
    pub read_policy: ReadPolicy,
    /// Redirections followed for one command before giving up. Default 5.
    pub max_redirects: u32,
    /// Commands a client may have in flight before the proxy stops reading
    /// from it (backpressure). Default 10 000.
    pub max_pending_requests_per_connection: u32,
    /// Largest single request a client may send: a longer one gets a
    /// protocol error and the connection is closed. It does not bound
    /// buffering (the pending limit and Envoy's watermarks do). Default 64 MiB.
    pub max_buffered_bytes_per_connection: usize,
    /// Resend a write whose connection broke before its reply came (e.g.
    /// its master was killed): it waits for the new master like any other
    /// command instead of failing. At-least-once for that one write, as
    /// cluster-aware clients do; `false` answers it with an error instead.
    /// Default true.
    pub retry_unanswered_writes: bool,
    /// Transactions (WATCH/MULTI) each hold a dedicated upstream connection;
    /// at most this many at once per Envoy worker, beyond which a new
    /// transaction gets an error. Default 1000.
    pub max_transaction_connections: u32,
    /// Blocking commands (BLPOP, XREAD BLOCK, …) each hold an upstream
    /// connection while blocked, from a pool kept per node; at most this
    /// many blocking connections (in use or idle) per Envoy worker, beyond
    /// which a blocking command gets an error. Default 1000.
    pub max_blocking_connections: u32,
    /// Bytes of Pub/Sub messages a subscriber may fall behind (waiting in
    /// the proxy or above Envoy's write watermark) before it is
    /// disconnected, like Redis's `client-output-buffer-limit pubsub` hard
    /// limit. Default 32 MiB.
    pub pubsub_output_limit: usize,
    /// Per-command statistics (`command.<name>.total/success/error/latency`),
    /// as Envoy's `enable_command_stats`. Default false, like Envoy's: they
    /// cost a histogram record per command.
    pub enable_command_stats: bool,
    /// Forward `CONFIG SET`/`RESETSTAT`/`REWRITE` to every node of the
    /// cluster (masters and replicas). Default false: they change the nodes
    /// for every client of the cluster, so the proxy refuses them unless an
    /// operator opts in. `CONFIG GET` is always answered.
    pub allow_admin_commands: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            op_timeout: Duration::from_secs(5),
            enable_redirection: true,
            enable_hashtagging: true,
            read_policy: ReadPolicy::Master,
            max_redirects: 5,
            max_pending_requests_per_connection: 10_000,
            max_buffered_bytes_per_connection: 64 << 20,
            retry_unanswered_writes: true,
            max_transaction_connections: 1000,
            max_blocking_connections: 1000,
            pubsub_output_limit: 32 << 20,
            enable_command_stats: false,
            allow_admin_commands: false,
        }
    }
}

/// Where read-only commands go, with Envoy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReadPolicy {
    /// Always the master (always fresh).
    #[default]
    Master,
    /// The master, or a replica when the master is unavailable.
    PreferMaster,
    /// Only replicas (may lag the master).
    Replica,
    /// A replica, or the master when no replica is available.
    PreferReplica,
    /// Any node of the shard.
    Any,
}

/// One upstream Redis Cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Nodes asked for the topology, `"host:port"` (IP, DNS name, or
    /// bracketed IPv6 `"[::1]:7000"`). At least one.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How often `CLUSTER SLOTS` is re-read. Default 5s.
    #[serde(default = "five_seconds", deserialize_with = "de_duration")]
    pub cluster_refresh_rate: Duration,
    /// How long one topology request may take. Default 3s.
    #[serde(default = "three_seconds", deserialize_with = "de_duration")]
    pub cluster_refresh_timeout: Duration,
    /// How long connecting to a node may take. Default 1s.
    #[serde(default = "one_second", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// ACL username for upstream `AUTH`, if any.
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub auth_username: Option<String>,
    /// Password for upstream `AUTH`, if any.
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub auth_password: Option<String>,
    /// TLS to the cluster's nodes; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Upstream TLS settings (certificates are verified; there is no switch to
/// turn verification off).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of the CAs that sign the nodes' certificates. Default: the
    /// system bundle (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate chain, for nodes that require one
    /// (`tls-auth-clients yes`); with `key_file`.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Name sent as SNI and checked against the certificates. Default: each
    /// node's own host (IP addresses are checked against IP SANs).
    #[serde(default)]
    pub sni: Option<String>,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn three_seconds() -> Duration {
    Duration::from_secs(3)
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// Routing of keys to clusters by prefix (Envoy's `PrefixRoutes`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRoutes {
    /// Prefix routes; the longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Match prefixes ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Used when no prefix matches.
    #[serde(default)]
    pub catch_all_route: Option<RouteTarget>,
}

/// Keys starting with `prefix` go to `cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub prefix: String,
    pub cluster: String,
    /// Strip the prefix from the key before forwarding.
    #[serde(default)]
    pub remove_prefix: bool,
    /// Overrides `settings.read_policy` for this route.
    #[serde(default)]
    pub read_policy: Option<ReadPolicy>,
    #[serde(default)]
    pub request_mirror_policy: Vec<MirrorPolicy>,
}

/// The catch-all route: a cluster without a prefix.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    pub cluster: String,
    #[serde(default)]
    pub read_policy: Option<ReadPolicy>,
    #[serde(default)]
    pub request_mirror_policy: Vec<MirrorPolicy>,
}

/// Copy matching commands to another cluster, fire-and-forget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    pub cluster: String,
    /// Mirror only writes.
    #[serde(default)]
    pub exclude_read_commands: bool,
    /// Share of commands mirrored; `None` mirrors all.
    #[serde(default)]
    pub runtime_fraction: Option<Fraction>,
}

/// A share of requests, normalized to parts per million.
///
/// Accepted as Envoy's `RuntimeFractionalPercent`
/// (`{"default_value": {"numerator": 10, "denominator": "HUNDRED"},
/// "runtime_key": "..."}`, the runtime key accepted and ignored; a numerator
/// above the denominator means 100%, as in Envoy), or as a plain number of
/// percent between 0 and 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    /// 0..=1_000_000.
    pub per_million: u32,
}

impl Fraction {
    /// One in a million.
    pub const MILLION: u32 = 1_000_000;

    /// True for a share `per_million / 1e6` of uniformly random `random`
    /// values.
    pub fn sampled(&self, random: u32) -> bool {
        random % Self::MILLION < self.per_million
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FractionVisitor)
    }
}

struct FractionVisitor;

fn percent<E: de::Error>(p: f64) -> Result<Fraction, E> {
    if !(0.0..=100.0).contains(&p) {
        return Err(E::custom(format!("percent {p} is not between 0 and 100")));
    }
    // In range, so the product fits in u32.
    Ok(Fraction {
        per_million: (p * 10_000.0).round() as u32,
    })
}

impl<'de> Visitor<'de> for FractionVisitor {
    type Value = Fraction;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a percentage 0..=100 or {\"default_value\": {\"numerator\": N, \"denominator\": \"HUNDRED\"}}")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Fraction, E> {
        percent(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Fraction, E> {
        percent(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Fraction, E> {
        percent(v)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Fraction, A::Error> {
        let raw = RawRuntimeFraction::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let Some(value) = raw.default_value else {
            return Err(de::Error::missing_field("default_value"));
        };
        let scale = match value.denominator {
            Denominator::Hundred => 10_000,
            Denominator::TenThousand => 100,
            Denominator::Million => 1,
        };
        let per_million = u64::from(value.numerator) * scale;
        Ok(Fraction {
            per_million: per_million.min(u64::from(Fraction::MILLION)) as u32,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntimeFraction {
    #[serde(default)]
    default_value: Option<RawFractionalPercent>,
    #[serde(default)]
    #[allow(dead_code)] // accepted for Envoy compatibility; no runtime here
    runtime_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFractionalPercent {
    #[serde(default)]
    numerator: u32,
    #[serde(default)]
    denominator: Denominator,
}

/// Envoy's `FractionalPercent.DenominatorType`, by name or by number.
#[derive(Default)]
enum Denominator {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

impl<'de> Deserialize<'de> for Denominator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const NAMES: &[&str] = &["HUNDRED", "TEN_THOUSAND", "MILLION"];
        impl Visitor<'_> for V {
            type Value = Denominator;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("HUNDRED, TEN_THOUSAND or MILLION")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Denominator, E> {
                match v {
                    "HUNDRED" => Ok(Denominator::Hundred),
                    "TEN_THOUSAND" => Ok(Denominator::TenThousand),
                    "MILLION" => Ok(Denominator::Million),
                    _ => Err(E::unknown_variant(v, NAMES)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Denominator, E> {
                match v {
                    0 => Ok(Denominator::Hundred),
                    1 => Ok(Denominator::TenThousand),
                    2 => Ok(Denominator::Million),
                    _ => Err(E::custom(format!(
                        "unknown denominator {v}, expected 0, 1 or 2"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret given as a plain string or as Envoy's `DataSource` with
/// `inline_string` (files and environment variables are not read here).
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or {\"inline_string\": \"...\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "inline_string" {
                        return Err(de::Error::unknown_field(&key, &["inline_string"]));
                    }
                    if value.is_some() {
                        return Err(de::Error::duplicate_field("inline_string"));
                    }
                    value = Some(map.next_value::<String>()?);
                }
                value
                    .map(Secret)
                    .ok_or_else(|| de::Error::missing_field("inline_string"))
            }
        }
        d.deserialize_any(V)
    }
}

fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Secret>::deserialize(d)?.map(|s| s.0))
}

fn de_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Secret>::deserialize(d)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string such as \"5s\" or \"250ms\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
        }
    }
    d.deserialize_str(V)
}

/// Longest accepted duration: anything longer is surely a mistake.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parse a duration: protobuf JSON form (`"5s"`, `"0.5s"`, `"1.000340012s"`)
/// plus the units `h`, `m`, `ms`, `us` and `ns` (`"250ms"`, `"2m"`). At most 9
/// fractional digits. Rejects negatives, a missing unit, garbage and anything
/// over one day.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') {
        return Err("negative durations are not allowed".to_string());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number == "." {
        return Err("expected a number followed by a unit, e.g. \"5s\"".to_string());
    }
    let unit_ns: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("missing unit (h, m, s, ms, us or ns)".to_string()),
        _ => return Err(format!("unknown unit {unit:?} (use h, m, s, ms, us or ns)")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("invalid number {number:?}"));
    }
    if frac.len() > 9 {
        return Err("at most 9 fractional digits".to_string());
    }
    const TOO_LARGE: &str = "too large (at most 1 day)";
    let int: u128 = if int.is_empty() {
        0
    } else if int.len() > 20 {
        return Err(TOO_LARGE.to_string());
    } else {
        int.parse()
            .map_err(|_| format!("invalid number {number:?}"))?
    };
    // Fraction in units of 1e-9, right-padded: ".5" → 500_000_000.
    let mut frac_nanos: u128 = 0;
    for (i, d) in frac.bytes().enumerate() {
        frac_nanos += u128::from(d - b'0') * 10u128.pow(8 - i as u32);
    }
    let nanos = int * unit_ns + frac_nanos * unit_ns / 1_000_000_000;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(TOO_LARGE.to_string());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

impl Config {
    /// Parse and validate the filter configuration. Errors name the field
    /// path, e.g. `settings.op_timeout: invalid duration "5x": ...`.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.is_empty() {
            return Err(ConfigError("filter_config is required".to_string()));
        }
        // Going through serde_json::Value keeps line/column noise out of the
        // messages (the input is one generated line anyway).
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError(format!("filter_config is not valid JSON: {e}")))?;
        reject_positional_structs(&value)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path.is_empty() || path == "." {
                ConfigError(inner)
            } else {
                ConfigError(format!("{path}: {inner}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |msg: String| Err(ConfigError(msg));
        if self.stat_prefix.is_empty() {
            return err("stat_prefix: must not be empty".into());
        }
        let s = &self.settings;
        if s.op_timeout.is_zero() {
            return err("settings.op_timeout: must be greater than 0".into());
        }
        if s.max_pending_requests_per_connection == 0 {
            return err(
                "settings.max_pending_requests_per_connection: must be greater than 0".into(),
            );
        }
        if s.max_buffered_bytes_per_connection == 0 {
            return err(
                "settings.max_buffered_bytes_per_connection: must be greater than 0".into(),
            );
        }
        if s.pubsub_output_limit == 0 {
            return err("settings.pubsub_output_limit: must be greater than 0".into());
        }
        if self.clusters.is_empty() {
            return err("clusters: at least one cluster is required".into());
        }
        for (name, cluster) in &self.clusters {
            if name.is_empty() {
                return err("clusters: a cluster name must not be empty".into());
            }
            if let Some(tls) = &cluster.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return err(format!(
                        "clusters.{name}.tls: cert_file and key_file go together"
                    ));
                }
                if let Err(e) = crate::tls::TlsSettings::load(tls) {
                    return err(format!("clusters.{name}.tls: {e}"));
                }
            }
            if cluster.seeds.is_empty() {
                return err(format!(
                    "clusters.{name}.seeds: at least one seed is required"
                ));
            }
            for (i, seed) in cluster.seeds.iter().enumerate() {
                if let Err(e) = crate::topology::split_host_port(seed) {
                    return err(format!(
                        "clusters.{name}.seeds[{i}]: invalid address {seed:?}: {e}"
                    ));
                }
            }
            for (field, value) in [
                ("cluster_refresh_rate", cluster.cluster_refresh_rate),
                ("cluster_refresh_timeout", cluster.cluster_refresh_timeout),
                ("connect_timeout", cluster.connect_timeout),
            ] {
                if value.is_zero() {
                    return err(format!("clusters.{name}.{field}: must be greater than 0"));
                }
            }
            if cluster.auth_username.is_some() && cluster.auth_password.is_none() {
                return err(format!(
                    "clusters.{name}.auth_username: requires auth_password"
                ));
            }
        }
        if self.downstream_auth_username.is_some() && self.downstream_auth_passwords.is_empty() {
            return err("downstream_auth_username: requires downstream_auth_passwords".into());
        }

        let routes = &self.prefix_routes;
        let known = |path: String, cluster: &str| -> Result<(), ConfigError> {
            if self.clusters.contains_key(cluster) {
                Ok(())
            } else {
                Err(ConfigError(format!("{path}: unknown cluster {cluster:?}")))
            }
        };
        let mirrors = |path: &str, policies: &[MirrorPolicy]| -> Result<(), ConfigError> {
            for (i, m) in policies.iter().enumerate() {
                known(
                    format!("{path}.request_mirror_policy[{i}].cluster"),
                    &m.cluster,
                )?;
            }
            Ok(())
        };
        for (i, route) in routes.routes.iter().enumerate() {
            let path = format!("prefix_routes.routes[{i}]");
            known(format!("{path}.cluster"), &route.cluster)?;
            mirrors(&path, &route.request_mirror_policy)?;
            let same = |other: &Route| {
                if routes.case_insensitive {
                    other.prefix.eq_ignore_ascii_case(&route.prefix)
                } else {
                    other.prefix == route.prefix
                }
            };
            if routes.routes.iter().take(i).any(same) {
                return err(format!(
                    "{path}.prefix: duplicate prefix {:?}",
                    route.prefix
                ));
            }
        }
        if let Some(catch_all) = &routes.catch_all_route {
            known(
                "prefix_routes.catch_all_route.cluster".into(),
                &catch_all.cluster,
            )?;
            mirrors(
                "prefix_routes.catch_all_route",
                &catch_all.request_mirror_policy,
            )?;
        }
        if routes.routes.is_empty() && routes.catch_all_route.is_none() {
            return err(
                "prefix_routes: at least one route or a catch_all_route is required".into(),
            );
        }
        Ok(())
    }
}

/// Serde's derived structs also accept a JSON array (fields by position), so
/// `"settings": []` would quietly mean "all defaults". Reject an array
/// wherever the schema has an object; other wrong types are left to serde.
fn reject_positional_structs(root: &serde_json::Value) -> Result<(), ConfigError> {
    use serde_json::Value;
    fn object(v: Option<&Value>, path: &str) -> Result<(), ConfigError> {
        match v {
            Some(Value::Array(_)) => {
                let sep = if path.is_empty() { "" } else { ": " };
                Err(ConfigError(format!(
                    "{path}{sep}invalid type: sequence, expected a map"
                )))
            }
            _ => Ok(()),
        }
    }
    fn each(v: Option<&Value>) -> impl Iterator<Item = (usize, &Value)> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
    }
    fn target(v: &Value, path: &str) -> Result<(), ConfigError> {
        object(Some(v), path)?;
        for (i, m) in each(v.get("request_mirror_policy")) {
            let path = format!("{path}.request_mirror_policy[{i}]");
            object(Some(m), &path)?;
            if let Some(f) = m.get("runtime_fraction") {
                object(
                    f.get("default_value"),
                    &format!("{path}.runtime_fraction.default_value"),
                )?;
            }
        }
        Ok(())
    }
    object(Some(root), "")?;
    object(root.get("settings"), "settings")?;
    if let Some(clusters) = root.get("clusters").and_then(Value::as_object) {
        for (name, cluster) in clusters {
            object(Some(cluster), &format!("clusters.{name}"))?;
        }
    }
    if let Some(routes) = root.get("prefix_routes") {
        object(Some(routes), "prefix_routes")?;
        for (i, route) in each(routes.get("routes")) {
            target(route, &format!("prefix_routes.routes[{i}]"))?;
        }
        if let Some(catch_all) = routes.get("catch_all_route") {
            target(catch_all, "prefix_routes.catch_all_route")?;
        }
    }
    Ok(())
}

/// The route chosen for a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteRef<'a> {
    /// Name of the cluster (a key of [`Config::clusters`]).
    pub cluster: &'a str,
    /// The route's read policy; `None` means `settings.read_policy`.
    pub read_policy: Option<ReadPolicy>,
    /// Where to mirror the command.
    pub mirrors: &'a [MirrorPolicy],
    /// The matched prefix ("" for the catch-all route).
    pub prefix: &'a str,
    /// Bytes to remove from the start of each key before forwarding
    /// (the prefix length when `remove_prefix` is set, else 0).
    pub strip: usize,
}

impl PrefixRoutes {
    /// The route for `key`: the longest matching prefix (ASCII
    /// case-insensitive when `case_insensitive`), else the catch-all route,
    /// else `None`. Allocation-free: a linear scan comparing in place, which
    /// for the handful of routes a config has beats any index.
    pub fn route_for(&self, key: &[u8]) -> Option<RouteRef<'_>> {
        let mut best: Option<&Route> = None;
        for route in &self.routes {
            let prefix = route.prefix.as_bytes();
            let Some(head) = key.get(..prefix.len()) else {
                continue;
            };
            let matches = if self.case_insensitive {
                head.eq_ignore_ascii_case(prefix)
            } else {
                head == prefix
            };
            if matches && best.is_none_or(|b| prefix.len() > b.prefix.len()) {
                best = Some(route);
            }
        }
        if let Some(route) = best {
            return Some(RouteRef {
                cluster: &route.cluster,
                read_policy: route.read_policy,
                mirrors: &route.request_mirror_policy,
                prefix: &route.prefix,
                strip: if route.remove_prefix {
                    route.prefix.len()
                } else {
                    0
                },
            });
        }
        self.catch_all_route.as_ref().map(|t| RouteRef {
            cluster: &t.cluster,
            read_policy: t.read_policy,
            mirrors: &t.request_mirror_policy,
            prefix: "",
            strip: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"stat_prefix":"redis","settings":{"op_timeout":"5s","enable_redirection":true,"enable_hashtagging":true,"read_policy":"MASTER"},
 "clusters":{"main":{"seeds":["127.0.0.1:7000","redis-cluster-0.redis:6379"],"cluster_refresh_rate":"5s","cluster_refresh_timeout":"3s"}},
 "prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(json.as_bytes())
    }

    fn error(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    /// A valid config with `extra` spliced into the top level.
    fn with(extra: &str) -> String {
        format!(r#"{{"clusters":{{"main":{{"seeds":["h:1"]}},"b":{{"seeds":["h:2"]}}}},{extra}}}"#)
    }

    #[test]
    fn sample_parses() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.stat_prefix, "redis");
        assert_eq!(c.settings, Settings::default());
        let main = &c.clusters["main"];
        assert_eq!(
            main.seeds,
            vec!["127.0.0.1:7000", "redis-cluster-0.redis:6379"]
        );
        assert_eq!(main.cluster_refresh_rate, Duration::from_secs(5));
        assert_eq!(main.cluster_refresh_timeout, Duration::from_secs(3));
        assert_eq!(main.connect_timeout, Duration::from_secs(1));
        assert_eq!(main.auth_password, None);
        assert!(c.prefix_routes.routes.is_empty());
        assert_eq!(
            c.prefix_routes.catch_all_route.as_ref().unwrap().cluster,
            "main"
        );
        assert!(c.downstream_auth_passwords.is_empty());
        let r = c.prefix_routes.route_for(b"anything").unwrap();
        assert_eq!(
            (r.cluster, r.strip, r.prefix, r.read_policy),
            ("main", 0, "", None)
        );
    }

    #[test]
    fn defaults() {
        let c = parse(&with(
            r#""prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ))
        .unwrap();
        assert_eq!(c.stat_prefix, "redis");
        let s = &c.settings;
        assert_eq!(s.op_timeout, Duration::from_secs(5));
        assert!(s.enable_redirection && s.enable_hashtagging);
        assert_eq!(s.read_policy, ReadPolicy::Master);
        assert_eq!(s.max_redirects, 5);
        assert_eq!(s.max_pending_requests_per_connection, 10_000);
        assert_eq!(s.max_buffered_bytes_per_connection, 64 * 1024 * 1024);
    }

    #[test]
    fn full_config() {
        let json = r#"{
          "stat_prefix": "edge",
          "settings": {"op_timeout": "0.25s", "enable_redirection": false, "enable_hashtagging": false,
                       "read_policy": "PREFER_REPLICA", "max_redirects": 2,
                       "max_pending_requests_per_connection": 100, "max_buffered_bytes_per_connection": 1048576},
          "clusters": {
            "main": {"seeds": ["[::1]:7000"], "connect_timeout": "250ms", "auth_username": "proxy",
                     "auth_password": {"inline_string": "s3cret"}},
            "shadow": {"seeds": ["shadow:6379"], "auth_password": "pw"}
          },
          "prefix_routes": {
            "case_insensitive": true,
            "routes": [
              {"prefix": "user:", "cluster": "main", "remove_prefix": true, "read_policy": "REPLICA",
               "request_mirror_policy": [{"cluster": "shadow", "exclude_read_commands": true,
                  "runtime_fraction": {"default_value": {"numerator": 10, "denominator": "TEN_THOUSAND"},
                                       "runtime_key": "mirror.user"}}]},
              {"prefix": "user:vip:", "cluster": "shadow"}
            ],
            "catch_all_route": {"cluster": "main", "request_mirror_policy": [{"cluster": "shadow", "runtime_fraction": 12.5}]}
          },
          "downstream_auth_username": {"inline_string": "app"},
          "downstream_auth_passwords": [{"inline_string": "a"}, "b"]
        }"#;
        let c = parse(json).unwrap();
        assert_eq!(c.stat_prefix, "edge");
        assert_eq!(c.settings.op_timeout, Duration::from_millis(250));
        assert!(!c.settings.enable_redirection && !c.settings.enable_hashtagging);
        assert_eq!(c.settings.read_policy, ReadPolicy::PreferReplica);
        assert_eq!(c.settings.max_redirects, 2);
        assert_eq!(c.settings.max_pending_requests_per_connection, 100);
        assert_eq!(c.settings.max_buffered_bytes_per_connection, 1 << 20);
        let main = &c.clusters["main"];
        assert_eq!(main.connect_timeout, Duration::from_millis(250));
        assert_eq!(main.auth_username.as_deref(), Some("proxy"));
        assert_eq!(main.auth_password.as_deref(), Some("s3cret"));
        assert_eq!(c.clusters["shadow"].auth_password.as_deref(), Some("pw"));
        assert_eq!(c.downstream_auth_username.as_deref(), Some("app"));
        assert_eq!(c.downstream_auth_passwords, vec!["a", "b"]);

        let routes = &c.prefix_routes;
        let r = routes.route_for(b"USER:42").unwrap();
        assert_eq!((r.cluster, r.strip, r.prefix), ("main", 5, "user:"));
        assert_eq!(r.read_policy, Some(ReadPolicy::Replica));
        assert_eq!(r.mirrors.len(), 1);
        assert!(r.mirrors[0].exclude_read_commands);
        assert_eq!(
            r.mirrors[0].runtime_fraction,
            Some(Fraction { per_million: 1000 })
        );
        // Longest prefix wins.
        let r = routes.route_for(b"user:VIP:1").unwrap();
        assert_eq!((r.cluster, r.strip), ("shadow", 0));
        // Catch-all.
        let r = routes.route_for(b"order:1").unwrap();
        assert_eq!((r.cluster, r.prefix), ("main", ""));
        assert_eq!(
            r.mirrors[0].runtime_fraction,
            Some(Fraction {
                per_million: 125_000
            })
        );
        assert_eq!(r.mirrors[0].runtime_fraction.unwrap().per_million, 125_000);
        assert!(routes.route_for(b"use").is_some());
    }

    #[test]
    fn route_for_without_catch_all() {
        let c = parse(&with(
            r#""prefix_routes":{"routes":[{"prefix":"a","cluster":"main"},{"prefix":"ab","cluster":"b"},{"prefix":"abc","cluster":"main","remove_prefix":true}]}"#,
        ))
        .unwrap();
        let routes = &c.prefix_routes;
        assert_eq!(routes.route_for(b"a").unwrap().cluster, "main");
        assert_eq!(routes.route_for(b"abx").unwrap().cluster, "b");
        let r = routes.route_for(b"abcd").unwrap();
        assert_eq!((r.cluster, r.strip), ("main", 3));
        // Case-sensitive by default.
        assert!(routes.route_for(b"ABC").is_none());
        assert!(routes.route_for(b"zzz").is_none());
        assert!(routes.route_for(b"").is_none());
    }

    #[test]
    fn empty_prefix_matches_everything() {
        let c = parse(&with(r#""prefix_routes":{"routes":[{"cluster":"b"}]}"#)).unwrap();
        assert_eq!(c.prefix_routes.route_for(b"").unwrap().cluster, "b");
        assert_eq!(c.prefix_routes.route_for(b"x").unwrap().cluster, "b");
    }

    #[test]
    fn required_and_empty() {
        assert_eq!(
            Config::from_json(b"").unwrap_err().to_string(),
            "filter_config is required"
        );
        assert!(error("{").starts_with("filter_config is not valid JSON"));
        assert_eq!(error("{}"), "clusters: at least one cluster is required");
        assert!(error("null").contains("invalid type"));
        assert_eq!(error("[]"), "invalid type: sequence, expected a map");
        let catch_all = r#""prefix_routes":{"catch_all_route":{"cluster":"main"}}"#;
        for (json, path) in [
            (with(&format!(r#""settings":[],{catch_all}"#)), "settings"),
            (with(&format!(r#""settings":["1s"],{catch_all}"#)), "settings"),
            (r#"{"clusters":{"main":[["h:1"]]}}"#.to_string(), "clusters.main"),
            (with(r#""prefix_routes":[]"#), "prefix_routes"),
            (with(r#""prefix_routes":{"routes":[["a","main"]]}"#), "prefix_routes.routes[0]"),
            (with(r#""prefix_routes":{"catch_all_route":["main"]}"#), "prefix_routes.catch_all_route"),
            (
                with(r#""prefix_routes":{"catch_all_route":{"cluster":"main","request_mirror_policy":[["b"]]}}"#),
                "prefix_routes.catch_all_route.request_mirror_policy[0]",
            ),
            (
                with(
                    r#""prefix_routes":{"catch_all_route":{"cluster":"main","request_mirror_policy":[{"cluster":"b","runtime_fraction":{"default_value":[1]}}]}}"#,
                ),
                "prefix_routes.catch_all_route.request_mirror_policy[0].runtime_fraction.default_value",
            ),
        ] {
            assert_eq!(error(&json), format!("{path}: invalid type: sequence, expected a map"), "{json}");
        }
        assert_eq!(
            error(r#"{"clusters":{"main":{"seeds":["h:1"]}}}"#),
            "prefix_routes: at least one route or a catch_all_route is required"
        );
    }

    #[test]
    fn unknown_fields_rejected_with_path() {
        let e = error(&with(
            r#""prefix_routes":{"catch_all_route":{"cluster":"main"}},"bogus":1"#,
        ));
        assert!(e.starts_with("bogus: unknown field `bogus`"), "{e}");
        let e = error(&with(
            r#""settings":{"op_timout":"5s"},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.op_timout: unknown field `op_timout`"),
            "{e}"
        );
        let e = error(
            r#"{"clusters":{"main":{"seeds":["h:1"],"refresh":"1s"}},"prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#,
        );
        assert!(e.starts_with("clusters.main.refresh: unknown field"), "{e}");
        let e = error(&with(
            r#""prefix_routes":{"routes":[{"cluster":"main","prefx":"a"}]}"#,
        ));
        assert!(
            e.starts_with("prefix_routes.routes[0].prefx: unknown field"),
            "{e}"
        );
        let e = error(&with(
            r#""prefix_routes":{"catch_all_route":{"cluster":"main","request_mirror_policy":[{"cluster":"b","x":1}]}}"#,
        ));
        assert!(
            e.starts_with(
                "prefix_routes.catch_all_route.request_mirror_policy[0].x: unknown field"
            ),
            "{e}"
        );
        let e = error(&with(
            r#""prefix_routes":{"catch_all_route":{"cluster":"main","request_mirror_policy":[{"cluster":"b","runtime_fraction":{"default_value":{"numerator":1,"denom":"HUNDRED"}}}]}}"#,
        ));
        assert!(
            e.contains(
                "request_mirror_policy[0].runtime_fraction.default_value.denom: unknown field"
            ),
            "{e}"
        );
        let e = error(&with(
            r#""prefix_routes":{"catch_all_route":{"cluster":"main"}},"downstream_auth_passwords":[{"filename":"/x"}]"#,
        ));
        assert!(e.starts_with("downstream_auth_passwords[0]"), "{e}");
        assert!(e.contains("unknown field `filename`"), "{e}");
    }

    #[test]
    fn wrong_types_rejected_with_path() {
        let e = error(&with(
            r#""settings":{"enable_redirection":"yes"},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.enable_redirection: invalid type: string \"yes\""),
            "{e}"
        );
        let e = error(&with(
            r#""settings":{"op_timeout":5},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.op_timeout: invalid type: integer `5`"),
            "{e}"
        );
        let e = error(&with(
            r#""settings":{"max_redirects":-1},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.max_redirects: invalid value"),
            "{e}"
        );
        let e = error(r#"{"clusters":{"main":{"seeds":"h:1"}}}"#);
        assert!(e.starts_with("clusters.main.seeds: invalid type"), "{e}");
        let e = error(r#"{"clusters":[]}"#);
        assert!(e.starts_with("clusters: invalid type"), "{e}");
    }

    #[test]
    fn seeds_validated() {
        let catch_all = r#""prefix_routes":{"catch_all_route":{"cluster":"main"}}"#;
        assert_eq!(
            error(&format!(r#"{{"clusters":{{"main":{{}}}},{catch_all}}}"#)),
            "clusters.main.seeds: at least one seed is required"
        );
        assert_eq!(
            error(&format!(
                r#"{{"clusters":{{"main":{{"seeds":[]}}}},{catch_all}}}"#
            )),
            "clusters.main.seeds: at least one seed is required"
        );
        for bad in ["nohost", ":1", "h:0", "h:70000", "::1:7000", "h:x"] {
            let e = error(&format!(
                r#"{{"clusters":{{"main":{{"seeds":["h:1","{bad}"]}}}},{catch_all}}}"#
            ));
            assert!(
                e.starts_with(&format!(
                    "clusters.main.seeds[1]: invalid address \"{bad}\""
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_clusters_rejected_with_path() {
        assert_eq!(
            error(&with(
                r#""prefix_routes":{"routes":[{"prefix":"a","cluster":"foo"}]}"#
            )),
            "prefix_routes.routes[0].cluster: unknown cluster \"foo\""
        );
        assert_eq!(
            error(&with(
                r#""prefix_routes":{"catch_all_route":{"cluster":"foo"}}"#
            )),
            "prefix_routes.catch_all_route.cluster: unknown cluster \"foo\""
        );
        assert_eq!(
            error(&with(
                r#""prefix_routes":{"routes":[{"prefix":"a","cluster":"main","request_mirror_policy":[{"cluster":"b"},{"cluster":"nope"}]}]}"#
            )),
            "prefix_routes.routes[0].request_mirror_policy[1].cluster: unknown cluster \"nope\""
        );
        let e = error(&with(r#""prefix_routes":{"routes":[{"prefix":"a"}]}"#));
        assert!(
            e.starts_with("prefix_routes.routes[0]: missing field `cluster`"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_prefixes_rejected() {
        assert_eq!(
            error(&with(
                r#""prefix_routes":{"routes":[{"prefix":"a","cluster":"main"},{"prefix":"a","cluster":"b"}]}"#
            )),
            "prefix_routes.routes[1].prefix: duplicate prefix \"a\""
        );
        // Differ only by case: fine unless case_insensitive.
        let json = r#""prefix_routes":{"routes":[{"prefix":"a","cluster":"main"},{"prefix":"A","cluster":"b"}]}"#;
        assert!(parse(&with(json)).is_ok());
        let json = r#""prefix_routes":{"case_insensitive":true,"routes":[{"prefix":"a","cluster":"main"},{"prefix":"A","cluster":"b"}]}"#;
        assert_eq!(
            error(&with(json)),
            "prefix_routes.routes[1].prefix: duplicate prefix \"A\""
        );
    }

    #[test]
    fn bad_durations_rejected_with_path() {
        let e = error(&with(
            r#""settings":{"op_timeout":"5x"},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.op_timeout: invalid duration \"5x\": "),
            "{e}"
        );
        let e = error(&with(
            r#""settings":{"op_timeout":"0s"},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert_eq!(e, "settings.op_timeout: must be greater than 0");
        let e = error(
            r#"{"clusters":{"main":{"seeds":["h:1"],"cluster_refresh_rate":"-1s"}},"prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#,
        );
        assert!(
            e.starts_with("clusters.main.cluster_refresh_rate: invalid duration \"-1s\""),
            "{e}"
        );
        let e = error(
            r#"{"clusters":{"main":{"seeds":["h:1"],"cluster_refresh_rate":"0ms"}},"prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#,
        );
        assert_eq!(
            e,
            "clusters.main.cluster_refresh_rate: must be greater than 0"
        );
        let e = error(
            r#"{"clusters":{"main":{"seeds":["h:1"],"connect_timeout":{"seconds":1}}},"prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#,
        );
        assert!(
            e.starts_with("clusters.main.connect_timeout: invalid type: map"),
            "{e}"
        );
    }

    #[test]
    fn bad_read_policy_rejected_with_path() {
        let e = error(&with(
            r#""settings":{"read_policy":"SLAVE"},"prefix_routes":{"catch_all_route":{"cluster":"main"}}"#,
        ));
        assert!(
            e.starts_with("settings.read_policy: unknown variant `SLAVE`"),
            "{e}"
        );
        let e = error(&with(
            r#""prefix_routes":{"routes":[{"cluster":"main","read_policy":"master"}]}"#,
        ));
        assert!(
            e.starts_with("prefix_routes.routes[0].read_policy: unknown variant `master`"),
            "{e}"
        );
        for (name, policy) in [
            ("MASTER", ReadPolicy::Master),
            ("PREFER_MASTER", ReadPolicy::PreferMaster),
            ("REPLICA", ReadPolicy::Replica),
            ("PREFER_REPLICA", ReadPolicy::PreferReplica),
            ("ANY", ReadPolicy::Any),
        ] {
            let json = with(&format!(
                r#""settings":{{"read_policy":"{name}"}},"prefix_routes":{{"catch_all_route":{{"cluster":"main"}}}}"#
            ));
            assert_eq!(parse(&json).unwrap().settings.read_policy, policy);
        }
    }

    #[test]
    fn other_validations() {
        let catch_all = r#""prefix_routes":{"catch_all_route":{"cluster":"main"}}"#;
        assert_eq!(
            error(&with(&format!(r#""stat_prefix":"",{catch_all}"#))),
            "stat_prefix: must not be empty"
        );
        assert_eq!(
            error(&with(&format!(
                r#""settings":{{"max_pending_requests_per_connection":0}},{catch_all}"#
            ))),
            "settings.max_pending_requests_per_connection: must be greater than 0"
        );
        assert_eq!(
            error(&with(&format!(
                r#""downstream_auth_username":"u",{catch_all}"#
            ))),
            "downstream_auth_username: requires downstream_auth_passwords"
        );
        assert_eq!(
            error(&format!(
                r#"{{"clusters":{{"":{{"seeds":["h:1"]}}}},{catch_all}}}"#
            )),
            "clusters: a cluster name must not be empty"
        );
    }

    #[test]
    fn runtime_fractions() {
        let frac = |json: &str| -> Result<Fraction, String> {
            let cfg = with(&format!(
                r#""prefix_routes":{{"catch_all_route":{{"cluster":"main","request_mirror_policy":[{{"cluster":"b","runtime_fraction":{json}}}]}}}}"#
            ));
            parse(&cfg)
                .map(|c| {
                    c.prefix_routes
                        .catch_all_route
                        .unwrap()
                        .request_mirror_policy[0]
                        .runtime_fraction
                        .unwrap()
                })
                .map_err(|e| e.to_string())
        };
        let pm = |n| Ok(Fraction { per_million: n });
        assert_eq!(
            frac(r#"{"default_value":{"numerator":10,"denominator":"HUNDRED"}}"#),
            pm(100_000)
        );
        assert_eq!(frac(r#"{"default_value":{"numerator":10}}"#), pm(100_000));
        assert_eq!(
            frac(r#"{"default_value":{"numerator":7,"denominator":"MILLION"},"runtime_key":"k"}"#),
            pm(7)
        );
        assert_eq!(
            frac(r#"{"default_value":{"numerator":3,"denominator":1}}"#),
            pm(300)
        );
        assert_eq!(
            frac(r#"{"default_value":{"numerator":500,"denominator":"HUNDRED"}}"#),
            pm(1_000_000)
        );
        assert_eq!(frac("100"), pm(1_000_000));
        assert_eq!(frac("0"), pm(0));
        assert_eq!(frac("0.5"), pm(5_000));
        assert!(frac("101")
            .unwrap_err()
            .contains("runtime_fraction: percent 101"));
        assert!(frac("-1").is_err());
        assert!(frac(r#""10""#)
            .unwrap_err()
            .contains("runtime_fraction: invalid type"));
        assert!(frac(r#"{"runtime_key":"k"}"#)
            .unwrap_err()
            .contains("missing field `default_value`"));
        let e = frac(r#"{"default_value":{"numerator":1,"denominator":"THOUSAND"}}"#).unwrap_err();
        assert!(
            e.contains("runtime_fraction.default_value.denominator: unknown variant `THOUSAND`"),
            "{e}"
        );

        let half = Fraction {
            per_million: 500_000,
        };
        assert!(half.sampled(0) && half.sampled(499_999) && !half.sampled(500_000));
        assert!(!Fraction { per_million: 0 }.sampled(0));
        assert!(Fraction {
            per_million: 1_000_000
        }
        .sampled(u32::MAX));
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("0.5s"), Duration::from_millis(500));
        assert_eq!(ok("1.000340012s"), Duration::new(1, 340_012));
        assert_eq!(ok(".25s"), Duration::from_millis(250));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("100us"), Duration::from_micros(100));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("24h"), Duration::from_secs(86400));
        assert_eq!(ok("86400s"), Duration::from_secs(86400));
        for bad in [
            "",
            "s",
            "5",
            "-5s",
            "-0s",
            "5x",
            "5 s",
            " 5s",
            "5s ",
            "5.s",
            "1.2.3s",
            "0.1234567891s",
            "86400.000000001s",
            "25h",
            "99999999999999999999999999s",
            "1e3s",
            "+5s",
            "five",
            ".s",
            "5S",
            "5sec",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("2d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("2days")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("90000s").unwrap_err().contains("too large"));
    }
}
