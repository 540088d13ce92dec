//! One Redis-shaped `INFO` reply from every master's `INFO`.
//!
//! A client reading `INFO` through the proxy expects one server: one
//! `# Server` section, one `used_memory`, one `db0:keys=…`. Each field is
//! combined across masters by what it measures:
//!
//! - counters and sizes are summed (`total_commands_processed`,
//!   `used_memory`, `keyspace_hits`, `db0:keys=…,expires=…`,
//!   `cmdstat_get:calls=…,usec=…`, `errorstat_ERR:count=…`);
//! - derived values are recomputed from the sums (`*_human` from the byte
//!   count, `usec_per_call` from `usec`/`calls`, `avg_ttl` weighted by
//!   `expires`);
//! - in-progress flags, peaks and latency percentiles take the largest value,
//!   the last save time the smallest;
//! - settings, ratios, text and whole sections that describe one process
//!   (`# Server`, `# Replication`, `# Cluster`, `# Modules`) are the first
//!   master's (masters ordered by their first slot).
//!
//! Sections and fields keep the first master's order; ones only other
//! masters have (a command only they ran) follow, so nothing is dropped.

/// The proxy's own section, appended when every section is asked for.
pub fn proxy_section(masters: usize) -> String {
    format!(
        "# Proxy\r\nproxy:envoy-redis-cluster\r\nproxy_version:{}\r\ncluster_masters:{masters}\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// How one field's values combine across masters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    First,
    Sum,
    Max,
    Min,
}

struct Section<'a> {
    /// The header line without `# `, as the node wrote it (`Server`).
    name: &'a str,
    fields: Vec<(&'a str, &'a str)>,
}

/// Sections of one INFO text, in order.
fn parse(text: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("# ") {
            out.push(Section {
                name: name.trim(),
                fields: Vec::new(),
            });
        } else if let Some((k, v)) = line.split_once(':') {
            if out.is_empty() {
                out.push(Section {
                    name: "",
                    fields: Vec::new(),
                });
            }
            if let Some(s) = out.last_mut() {
                s.fields.push((k, v));
            }
        }
    }
    out
}

/// `text` with each `field:value` line of `fields` given that value (the
/// proxy's own figures where the nodes' sum would mislead).
pub fn set_fields(text: &str, fields: &[(&str, String)]) -> String {
    if fields.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        let name = line.split(':').next().unwrap_or_default();
        match fields
            .iter()
            .find(|(f, _)| *f == name && line.contains(':'))
        {
            Some((f, v)) => {
                out.push_str(f);
                out.push(':');
                out.push_str(v);
                out.push_str("\r\n");
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The combined INFO text of `bodies` (each master's INFO, in master order),
/// with `extra` (the proxy's own section, complete with its header) last.
pub fn aggregate(bodies: &[&str], extra: Option<&str>) -> String {
    let parsed: Vec<Vec<Section<'_>>> = bodies.iter().map(|b| parse(b)).collect();
    // Section names in order of first appearance across masters.
    let mut names: Vec<&str> = Vec::new();
    for sections in &parsed {
        for s in sections {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(s.name)) {
                names.push(s.name);
            }
        }
    }
    let mut out = String::new();
    for name in names {
        let per_master: Vec<&Section<'_>> = parsed
            .iter()
            .filter_map(|sections| sections.iter().find(|s| s.name.eq_ignore_ascii_case(name)))
            .collect();
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        if !name.is_empty() {
            out.push_str("# ");
            out.push_str(name);
            out.push_str("\r\n");
        }
        for (field, value) in merge_section(name, &per_master) {
            out.push_str(field);
            out.push(':');
            out.push_str(&value);
            out.push_str("\r\n");
        }
    }
    if let Some(extra) = extra {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        out.push_str(extra);
    }
    out
}

fn merge_section<'a>(name: &str, masters: &[&Section<'a>]) -> Vec<(&'a str, String)> {
    let mut fields: Vec<&'a str> = Vec::new();
    for s in masters {
        for (k, _) in &s.fields {
            if !fields.contains(k) {
                fields.push(k);
            }
        }
    }
    let section = name.to_ascii_lowercase();
    let one_process = matches!(
        section.as_str(),
        "server" | "replication" | "cluster" | "modules"
    ) || !KNOWN_SECTIONS.contains(&section.as_str());
    let values_of = |field: &str| -> Vec<&'a str> {
        masters
            .iter()
            .filter_map(|s| s.fields.iter().find(|(k, _)| *k == field).map(|(_, v)| *v))
            .collect()
    };
    let mut merged: Vec<(&'a str, String)> = Vec::with_capacity(fields.len());
    for field in &fields {
        let values = values_of(field);
        let first = values.first().copied().unwrap_or_default();
        let value = if one_process || field.ends_with("_human") {
            first.to_string()
        } else if values.iter().any(|v| v.contains('=')) {
            merge_subfields(&values)
        } else {
            combine(rule(&section, field), &values).unwrap_or_else(|| first.to_string())
        };
        merged.push((field, value));
    }
    if !one_process {
        // `used_memory_human` and friends describe the summed byte count.
        let sums: Vec<(&str, String)> = merged.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (field, value) in merged.iter_mut() {
            let Some(base) = field.strip_suffix("_human") else {
                continue;
            };
            let bytes = sums
                .iter()
                .find(|(k, _)| *k == base)
                .and_then(|(_, v)| v.parse::<u64>().ok());
            if let Some(bytes) = bytes {
                *value = bytes_to_human(bytes);
            }
        }
    }
    merged
}

/// Sections whose numbers this module knows how to combine.
const KNOWN_SECTIONS: &[&str] = &[
    "clients",
    "memory",
    "persistence",
    "stats",
    "cpu",
    "errorstats",
    "keyspace",
    "commandstats",
    "latencystats",
];

fn rule(section: &str, field: &str) -> Rule {
    const FIRST: &[&str] = &[
        "maxclients",
        "maxmemory",
        "total_system_memory",
        "rdb_last_bgsave_status",
        "aof_last_bgrewrite_status",
        "aof_last_write_status",
        "current_fork_perc",
        "expired_stale_perc",
    ];
    const MAX: &[&str] = &[
        "client_recent_max_input_buffer",
        "client_recent_max_output_buffer",
        "latest_fork_usec",
        "current_eviction_exceeded_time",
        "current_active_defrag_time",
        "io_threads_active",
        "number_of_cached_scripts",
        "number_of_functions",
        "number_of_libraries",
        "used_memory_peak_perc",
    ];
    if FIRST.contains(&field)
        || field.ends_with("_ratio")
        || field.ends_with("_perc")
        || field.ends_with("_policy")
    {
        return Rule::First;
    }
    if MAX.contains(&field) {
        return Rule::Max;
    }
    if section == "persistence" {
        // Flags, durations and timestamps of one save: any node's counts.
        if field == "rdb_last_save_time" {
            return Rule::Min;
        }
        let summed = field == "rdb_changes_since_last_save"
            || field.ends_with("_saves")
            || field.ends_with("_rewrites")
            || field.ends_with("_cow_size")
            || field.contains("_keys_");
        return if summed { Rule::Sum } else { Rule::Max };
    }
    Rule::Sum
}

/// A number as INFO prints it: an integer, or a decimal with its precision.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64, usize),
}

fn number(s: &str) -> Option<Num> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    match s.split_once('.') {
        None => s.parse().ok().map(Num::Int),
        Some((_, frac)) => s.parse().ok().map(|f| Num::Float(f, frac.len())),
    }
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f, _) => f,
    }
}

fn render(n: Num) -> String {
    match n {
        Num::Int(i) => i.to_string(),
        Num::Float(f, prec) => format!("{f:.prec$}"),
    }
}

/// Combine plain values; `None` when they are not all numbers (or a sum
/// overflows), so the caller falls back to the first master's.
fn combine(rule: Rule, values: &[&str]) -> Option<String> {
    if rule == Rule::First {
        return values.first().map(|v| v.to_string());
    }
    let nums: Vec<Num> = values.iter().map(|v| number(v)).collect::<Option<_>>()?;
    let first = *nums.first()?;
    let all_int = nums.iter().all(|n| matches!(n, Num::Int(_)));
    if all_int {
        let ints = nums.iter().map(|n| match n {
            Num::Int(i) => *i,
            Num::Float(..) => 0,
        });
        let v = match rule {
            Rule::Sum => ints.into_iter().try_fold(0i64, |a, b| a.checked_add(b))?,
            Rule::Max => ints.max()?,
            Rule::Min => ints.min()?,
            Rule::First => return Some(render(first)),
        };
        return Some(v.to_string());
    }
    let prec = nums
        .iter()
        .map(|n| match n {
            Num::Float(_, p) => *p,
            Num::Int(_) => 0,
        })
        .max()
        .unwrap_or(0);
    let fs = nums.iter().map(|n| as_f64(*n));
    let v = match rule {
        Rule::Sum => fs.sum(),
        Rule::Max => fs.fold(f64::MIN, f64::max),
        Rule::Min => fs.fold(f64::MAX, f64::min),
        Rule::First => return Some(render(first)),
    };
    Some(render(Num::Float(v, prec)))
}

/// `k=v,k=v` values (keyspace, commandstats, errorstats, latencystats).
fn merge_subfields(values: &[&str]) -> String {
    let parsed: Vec<Vec<(&str, &str)>> = values
        .iter()
        .map(|v| v.split(',').filter_map(|kv| kv.split_once('=')).collect())
        .collect();
    let mut keys: Vec<&str> = Vec::new();
    for p in &parsed {
        for (k, _) in p {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    let of = |key: &str| -> Vec<&str> {
        parsed
            .iter()
            .filter_map(|p| p.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
            .collect()
    };
    let total = |key: &str| -> Option<f64> {
        of(key)
            .iter()
            .map(|v| number(v).map(as_f64))
            .sum::<Option<f64>>()
    };
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let vals = of(key);
        let first = vals.first().copied().unwrap_or_default().to_string();
        let value = match key {
            "usec_per_call" => match (total("usec"), total("calls")) {
                (Some(usec), Some(calls)) if calls > 0.0 => format!("{:.2}", usec / calls),
                _ => first,
            },
            "avg_ttl" => weighted_ttl(&parsed).unwrap_or(first),
            // Latency percentiles (p50, p99, p99.9): the slowest master's.
            _ if key.starts_with('p')
                && key[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
            {
                combine(Rule::Max, &vals).unwrap_or(first)
            }
            _ => combine(Rule::Sum, &vals).unwrap_or(first),
        };
        out.push(format!("{key}={value}"));
    }
    out.join(",")
}

/// Keyspace `avg_ttl` over all masters: each master's average weighted by
/// its keys with an expiry.
fn weighted_ttl(parsed: &[Vec<(&str, &str)>]) -> Option<String> {
    let mut weight = 0i128;
    let mut total = 0i128;
    for p in parsed {
        let get = |k: &str| -> Option<i128> {
            p.iter()
                .find(|(key, _)| *key == k)
                .and_then(|(_, v)| v.parse().ok())
        };
        let (Some(ttl), Some(expires)) = (get("avg_ttl"), get("expires")) else {
            continue;
        };
        if ttl > 0 {
            weight += expires;
            total += ttl * expires;
        }
    }
    Some(if weight > 0 { total / weight } else { 0 }.to_string())
}

/// Redis's `bytesToHuman`.
fn bytes_to_human(n: u64) -> String {
    const UNITS: [(char, u32); 5] = [('K', 1), ('M', 2), ('G', 3), ('T', 4), ('P', 5)];
    if n < 1024 {
        return format!("{n}B");
    }
    for (unit, power) in UNITS {
        let next = 1024f64.powi(power as i32 + 1);
        if (n as f64) < next {
            return format!("{:.2}{unit}", n as f64 / 1024f64.powi(power as i32));
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.split("\r\n")
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
    }

    const A: &str = "# Server\r\nredis_version:7.0.15\r\nprocess_id:11\r\ntcp_port:7001\r\n\r\n\
        # Clients\r\nconnected_clients:2\r\nmaxclients:10000\r\n\r\n\
        # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmem_fragmentation_ratio:1.50\r\nmaxmemory_policy:noeviction\r\n\r\n\
        # Stats\r\ntotal_commands_processed:10\r\ninstantaneous_input_kbps:0.50\r\n\r\n\
        # CPU\r\nused_cpu_sys:0.100000\r\n\r\n\
        # Errorstats\r\nerrorstat_ERR:count=1\r\n\r\n\
        # Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\r\n\
        # Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=1000\r\n";
    const B: &str = "# Server\r\nredis_version:7.0.15\r\nprocess_id:22\r\ntcp_port:7002\r\n\r\n\
        # Clients\r\nconnected_clients:3\r\nmaxclients:10000\r\n\r\n\
        # Memory\r\nused_memory:2097152\r\nused_memory_human:2.00M\r\nmem_fragmentation_ratio:2.50\r\nmaxmemory_policy:noeviction\r\n\r\n\
        # Stats\r\ntotal_commands_processed:5\r\ninstantaneous_input_kbps:0.25\r\n\r\n\
        # CPU\r\nused_cpu_sys:0.250000\r\n\r\n\
        # Errorstats\r\nerrorstat_WRONGTYPE:count=2\r\n\r\n\
        # Commandstats\r\ncmdstat_get:calls=2,usec=30,usec_per_call=15.00,rejected_calls=1,failed_calls=0\r\ncmdstat_set:calls=1,usec=3,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\r\n\
        # Keyspace\r\ndb0:keys=5,expires=3,avg_ttl=2000\r\n";

    #[test]
    fn one_server_section_with_summed_counters() {
        let out = aggregate(&[A, B], None);
        assert_eq!(out.matches("# Server").count(), 1, "{out}");
        assert_eq!(out.matches("redis_version:").count(), 1);
        assert_eq!(field(&out, "process_id"), Some("11"));
        assert_eq!(field(&out, "tcp_port"), Some("7001"));
        assert_eq!(field(&out, "connected_clients"), Some("5"));
        let own = set_fields(&out, &[("connected_clients", "1".to_string())]);
        assert_eq!(field(&own, "connected_clients"), Some("1"));
        assert_eq!(
            own.replace("connected_clients:1", "connected_clients:5"),
            out
        );
        assert_eq!(field(&out, "maxclients"), Some("10000"));
        assert_eq!(field(&out, "used_memory"), Some("3145728"));
        assert_eq!(field(&out, "used_memory_human"), Some("3.00M"));
        assert_eq!(field(&out, "mem_fragmentation_ratio"), Some("1.50"));
        assert_eq!(field(&out, "maxmemory_policy"), Some("noeviction"));
        assert_eq!(field(&out, "total_commands_processed"), Some("15"));
        assert_eq!(field(&out, "instantaneous_input_kbps"), Some("0.75"));
        assert_eq!(field(&out, "used_cpu_sys"), Some("0.350000"));
        assert_eq!(field(&out, "errorstat_ERR"), Some("count=1"));
        assert_eq!(field(&out, "errorstat_WRONGTYPE"), Some("count=2"));
        assert_eq!(
            field(&out, "cmdstat_get"),
            Some("calls=4,usec=40,usec_per_call=10.00,rejected_calls=1,failed_calls=0")
        );
        assert_eq!(
            field(&out, "cmdstat_set"),
            Some("calls=1,usec=3,usec_per_call=3.00,rejected_calls=0,failed_calls=0")
        );
        // (1000*1 + 2000*3) / 4
        assert_eq!(field(&out, "db0"), Some("keys=8,expires=4,avg_ttl=1750"));
        // Redis's layout: sections separated by one empty line.
        assert!(out.starts_with("# Server\r\nredis_version:7.0.15\r\n"));
        assert!(out.contains("tcp_port:7001\r\n\r\n# Clients\r\n"));
        assert!(out.ends_with("avg_ttl=1750\r\n"));
    }

    #[test]
    fn a_section_or_database_only_some_masters_have_is_kept() {
        let a = "# Keyspace\r\n";
        let b = "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n";
        let out = aggregate(&[a, b], Some("# Proxy\r\nproxy:x\r\n"));
        assert_eq!(
            out,
            "# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n\r\n# Proxy\r\nproxy:x\r\n"
        );
        let empty = aggregate(&["# Keyspace\r\n", "# Keyspace\r\n"], None);
        assert_eq!(empty, "# Keyspace\r\n");
    }

    #[test]
    fn persistence_flags_take_the_busiest_master() {
        let a = "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:4\r\nrdb_last_save_time:100\r\nrdb_bgsave_in_progress:0\r\n";
        let b = "# Persistence\r\nloading:1\r\nrdb_changes_since_last_save:6\r\nrdb_last_save_time:50\r\nrdb_bgsave_in_progress:0\r\n";
        let out = aggregate(&[a, b], None);
        assert_eq!(field(&out, "loading"), Some("1"));
        assert_eq!(field(&out, "rdb_changes_since_last_save"), Some("10"));
        assert_eq!(field(&out, "rdb_last_save_time"), Some("50"));
    }

    #[test]
    fn latency_percentiles_are_the_slowest_masters() {
        let a =
            "# Latencystats\r\nlatency_percentiles_usec_get:p50=1.003,p99=5.001,p99.9=9.000\r\n";
        let b =
            "# Latencystats\r\nlatency_percentiles_usec_get:p50=2.001,p99=3.001,p99.9=12.000\r\n";
        let out = aggregate(&[a, b], None);
        assert_eq!(
            field(&out, "latency_percentiles_usec_get"),
            Some("p50=2.001,p99=5.001,p99.9=12.000")
        );
    }

    #[test]
    fn odd_input_never_panics_and_keeps_text() {
        let out = aggregate(
            &["garbage\r\nx:1\r\n# Stats\r\nk:v\r\n", "# Stats\r\nk:w\r\n"],
            None,
        );
        assert!(out.contains("x:1") && out.contains("k:v"), "{out}");
        let big = format!("# Stats\r\nn:{}\r\n", i64::MAX);
        let out = aggregate(&[&big, &big], None);
        assert_eq!(field(&out, "n"), Some(i64::MAX.to_string().as_str()));
        assert_eq!(aggregate(&[], None), "");
    }

    #[test]
    fn bytes_to_human_matches_redis() {
        assert_eq!(bytes_to_human(0), "0B");
        assert_eq!(bytes_to_human(1023), "1023B");
        assert_eq!(bytes_to_human(1024), "1.00K");
        assert_eq!(bytes_to_human(1536 * 1024), "1.50M");
        assert_eq!(bytes_to_human(3 << 30), "3.00G");
    }
}
