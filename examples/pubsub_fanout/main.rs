//! Pub/Sub fan-out load generator for `scripts/bench-pubsub.sh` (issue #13).
//!
//! Opens N subscriber connections to `--sub-addr`, SUBSCRIBEs each to one
//! channel and waits for every acknowledgement; then one publisher connection
//! to `--pub-addr` PUBLISHes at `--rate` messages/s for `--seconds`. Each
//! payload is `SEQ:SEND_NS:` padded to `--payload-bytes`, SEND_NS being
//! nanoseconds on this process's monotonic clock, so the delivery latency
//! (publish to receipt) needs no clock shared with anything else.
//!
//! Prints one `RESULT` line of `key=value` fields on stdout (the script reads
//! it) and a summary on stderr. Exit codes: 0 done, 2 usage, 3 the server
//! refused SUBSCRIBE (`REFUSED subscribe <error>` on stdout), 4 it refused
//! PUBLISH (`REFUSED publish <error>`), 1 anything else.
//!
//! It measures what it achieves and never extrapolates: when the machine
//! cannot deliver N x rate messages/s, latency grows, the drain after the
//! last PUBLISH takes longer, and `delivery_rate` says what was reached.

mod hist;
mod procstat;
mod resp;
mod subscribers;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hist::Histogram;
use procstat::{rss_kb, snapshot};
use resp::{command, payload};
use subscribers::{now_ns, run_worker, Shared, SubStats};

const USAGE: &str = "usage: pubsub_fanout --sub-addr HOST:PORT --pub-addr HOST:PORT
  [--subscribers N (10000)] [--rate MSG_PER_S (1000)] [--seconds S (10)]
  [--channel NAME (psbench)] [--payload-bytes B (64)] [--threads T (1)]
  [--connect-batch K (500)] [--ack-timeout S (120)]
  [--drain-idle-ms MS (2000)] [--drain-max S (60)]
  [--watch LABEL=PID]... [--clk-tck HZ (100)]";

#[derive(Debug)]
enum Failure {
    Usage(String),
    SubscribeRefused(String),
    PublishRefused(String),
    Io(String, io::Error),
    Run(String),
}

impl Failure {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
        let what = what.into();
        move |e| Failure::Io(what, e)
    }
}

#[derive(Clone)]
struct Config {
    sub_addr: SocketAddr,
    pub_addr: SocketAddr,
    subscribers: usize,
    rate: f64,
    seconds: f64,
    channel: String,
    payload_bytes: usize,
    threads: usize,
    connect_batch: usize,
    ack_timeout: Duration,
    drain_idle: Duration,
    drain_max: Duration,
    watch: Vec<(String, u32)>,
    clk_tck: f64,
}

fn parse_args() -> Result<Config, Failure> {
    let mut kv: HashMap<String, String> = HashMap::new();
    let mut watch = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(Failure::Usage(String::new()));
        }
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| Failure::Usage(format!("unexpected argument {flag}")))?
            .to_string();
        let value = args
            .next()
            .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
        if name == "watch" {
            let (label, pid) = value
                .split_once('=')
                .ok_or_else(|| Failure::Usage(format!("--watch {value}: want LABEL=PID")))?;
            let pid = pid
                .parse()
                .map_err(|_| Failure::Usage(format!("--watch {value}: bad PID")))?;
            watch.push((label.to_string(), pid));
        } else {
            kv.insert(name, value);
        }
    }
    fn take<T: std::str::FromStr>(
        kv: &mut HashMap<String, String>,
        name: &str,
        default: Option<T>,
    ) -> Result<T, Failure> {
        match kv.remove(name) {
            Some(v) => v
                .parse()
                .map_err(|_| Failure::Usage(format!("--{name} {v}: not a valid value"))),
            None => default.ok_or_else(|| Failure::Usage(format!("--{name} is required"))),
        }
    }
    let cfg = Config {
        sub_addr: take(&mut kv, "sub-addr", None)?,
        pub_addr: take(&mut kv, "pub-addr", None)?,
        subscribers: take(&mut kv, "subscribers", Some(10_000))?,
        rate: take(&mut kv, "rate", Some(1000.0))?,
        seconds: take(&mut kv, "seconds", Some(10.0))?,
        channel: take(&mut kv, "channel", Some("psbench".to_string()))?,
        payload_bytes: take(&mut kv, "payload-bytes", Some(64))?,
        threads: take(&mut kv, "threads", Some(1))?,
        connect_batch: take(&mut kv, "connect-batch", Some(500))?,
        ack_timeout: Duration::from_secs_f64(take(&mut kv, "ack-timeout", Some(120.0))?),
        drain_idle: Duration::from_millis(take(&mut kv, "drain-idle-ms", Some(2000))?),
        drain_max: Duration::from_secs_f64(take(&mut kv, "drain-max", Some(60.0))?),
        watch,
        clk_tck: take(&mut kv, "clk-tck", Some(100.0))?,
    };
    if let Some(name) = kv.keys().next() {
        return Err(Failure::Usage(format!("unknown option --{name}")));
    }
    if cfg.subscribers == 0 || cfg.threads == 0 || cfg.connect_batch == 0 {
        return Err(Failure::Usage(
            "--subscribers, --threads and --connect-batch must be positive".into(),
        ));
    }
    if !(cfg.rate > 0.0 && cfg.seconds > 0.0 && cfg.clk_tck > 0.0) {
        return Err(Failure::Usage(
            "--rate, --seconds and --clk-tck must be positive".into(),
        ));
    }
    Ok(cfg)
}

// --- probes -----------------------------------------------------------------------

/// Sends one command on a fresh connection and returns its first reply line.
/// The timeout is long: a node may still be busy with an earlier run's
/// backlog.
fn probe(addr: SocketAddr, cmd: &[u8]) -> Result<String, Failure> {
    let what = format!("probe of {addr}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(Failure::io(what.clone()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(Failure::io(what.clone()))?;
    s.write_all(cmd).map_err(Failure::io(what.clone()))?;
    let mut first = String::new();
    BufReader::new(&s)
        .read_line(&mut first)
        .map_err(Failure::io(what.clone()))?;
    if first.is_empty() {
        return Err(Failure::Run(format!(
            "{what}: connection closed without a reply"
        )));
    }
    Ok(first.trim_end().to_string())
}

// --- the publisher ----------------------------------------------------------------

struct PubReplies {
    ints: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Counts PUBLISH replies until the connection is shut down.
fn read_publish_replies(stream: TcpStream) -> PubReplies {
    let mut out = PubReplies {
        ints: 0,
        errors: 0,
        first_error: None,
    };
    let mut r = BufReader::new(stream);
    let mut l = String::new();
    loop {
        l.clear();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
        if l.starts_with(':') {
            out.ints += 1;
        } else {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| l.trim_end().to_string());
        }
    }
}

struct Published {
    count: u64,
    start_ns: u64,
    end_ns: u64,
    max_lag: Duration,
}

/// PUBLISHes on a fixed schedule (message i at start + i/rate): a publisher
/// that falls behind sends late messages at once, so the offered rate stays
/// the configured one whenever the machine can write it.
fn publish(stream: &mut TcpStream, cfg: &Config, base: Instant) -> Result<Published, Failure> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cfg.seconds);
    let mut count = 0u64;
    let mut max_lag = Duration::ZERO;
    let start_ns = now_ns(base);
    loop {
        let due = start + Duration::from_secs_f64(count as f64 / cfg.rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else {
            max_lag = max_lag.max(now - due);
        }
        let p = payload(count, now_ns(base), cfg.payload_bytes);
        stream
            .write_all(&command(&[b"PUBLISH", cfg.channel.as_bytes(), &p]))
            .map_err(Failure::io("PUBLISH"))?;
        count += 1;
    }
    Ok(Published {
        count,
        start_ns,
        end_ns: now_ns(base),
        max_lag,
    })
}

// --- main ---------------------------------------------------------------------------

fn run(cfg: Config) -> Result<(), Failure> {
    let base = Instant::now();
    // The probes use a channel of their own, so that the measured channel's
    // first subscriber is a measured one (and a proxy's shared subscription
    // to it starts with the measurement).
    let probe_channel = format!("{}:probe", cfg.channel);
    let sub_probe = probe(
        cfg.sub_addr,
        &command(&[b"SUBSCRIBE", probe_channel.as_bytes()]),
    )?;
    if let Some(err) = sub_probe.strip_prefix('-') {
        return Err(Failure::SubscribeRefused(err.to_string()));
    }
    let pub_probe = probe(
        cfg.pub_addr,
        &command(&[b"PUBLISH", probe_channel.as_bytes(), b"probe"]),
    )?;
    if let Some(err) = pub_probe.strip_prefix('-') {
        return Err(Failure::PublishRefused(err.to_string()));
    }
    if !pub_probe.starts_with(':') {
        return Err(Failure::Run(format!(
            "PUBLISH probe answered {pub_probe:?}, not an integer"
        )));
    }

    let shared = Arc::new(Shared::default());
    let t_connect = Instant::now();
    let mut workers = Vec::new();
    for t in 0..cfg.threads {
        let count = cfg.subscribers / cfg.threads + usize::from(t < cfg.subscribers % cfg.threads);
        let (cfg2, shared2) = (cfg.clone(), Arc::clone(&shared));
        workers.push(thread::spawn(move || {
            let r = run_worker(count, &cfg2, &shared2, base);
            if let Err(e) = &r {
                shared2.fail(format!("{e:?}"));
            }
            r
        }));
    }
    let stop_workers =
        |shared: &Shared, workers: Vec<thread::JoinHandle<Result<SubStats, Failure>>>| {
            shared.stop.store(true, Ordering::Relaxed);
            let mut out = Vec::new();
            for w in workers {
                match w.join() {
                    Ok(r) => out.push(r),
                    Err(_) => out.push(Err(Failure::Run("a subscriber thread panicked".into()))),
                }
            }
            out
        };
    // Every subscriber acknowledged, or a clear reason why not.
    loop {
        let acked = shared.acked.load(Ordering::Relaxed);
        if acked == cfg.subscribers {
            break;
        }
        if let Some(f) = shared.failed() {
            stop_workers(&shared, workers);
            if let Some(err) = f.strip_prefix("SUBSCRIBE answered -") {
                return Err(Failure::SubscribeRefused(err.to_string()));
            }
            return Err(Failure::Run(format!(
                "{acked} of {} subscribers acknowledged, then: {f}",
                cfg.subscribers
            )));
        }
        if t_connect.elapsed() > cfg.ack_timeout {
            stop_workers(&shared, workers);
            return Err(Failure::Run(format!(
                "only {acked} of {} subscribers acknowledged SUBSCRIBE within {:?}",
                cfg.subscribers, cfg.ack_timeout
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    eprintln!(
        "pubsub_fanout: {} subscribers acknowledged in {connect_s:.1} s; publishing {} msg/s for {} s",
        cfg.subscribers, cfg.rate, cfg.seconds
    );

    let mut pub_stream =
        TcpStream::connect(cfg.pub_addr).map_err(Failure::io("publisher connect"))?;
    pub_stream
        .set_nodelay(true)
        .map_err(Failure::io("publisher"))?;
    let reader = pub_stream.try_clone().map_err(Failure::io("publisher"))?;
    let replies = thread::spawn(move || read_publish_replies(reader));

    let cpu0 = snapshot(&cfg);
    let published = publish(&mut pub_stream, &cfg, base)?;
    let expected = published.count * cfg.subscribers as u64;

    // Drain: until every message arrived, nothing arrived for drain_idle, or
    // drain_max passed.
    let t_drain = Instant::now();
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    let drained = loop {
        let d = shared.delivered.load(Ordering::Relaxed);
        if d >= expected {
            break "complete";
        }
        if d != last {
            last = d;
            last_change = Instant::now();
        } else if last_change.elapsed() >= cfg.drain_idle {
            break "idle";
        }
        if t_drain.elapsed() >= cfg.drain_max {
            break "timeout";
        }
        thread::sleep(Duration::from_millis(10));
    };
    let drain_s = t_drain.elapsed().as_secs_f64();
    let cpu1 = snapshot(&cfg);
    let rss: Vec<Option<u64>> = cfg.watch.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let _ = pub_stream.shutdown(Shutdown::Both);
    let pub_replies = replies
        .join()
        .map_err(|_| Failure::Run("the publish reply reader panicked".into()))?;

    let mut hist = Histogram::new();
    let (mut distinct, mut dups, mut closed, mut unexpected) = (Vec::new(), 0, 0, 0);
    for r in stop_workers(&shared, workers) {
        let s = r?;
        hist.merge(&s.hist);
        distinct.extend(s.distinct);
        dups += s.dups;
        closed += s.closed;
        unexpected += s.unexpected;
    }
    let delivered: u64 = hist.n;
    let lost: u64 = distinct
        .iter()
        .map(|d| published.count.saturating_sub(*d))
        .sum();
    let subs_lost = distinct.iter().filter(|d| **d < published.count).count();
    let last_recv_ns = shared.last_recv_ns.load(Ordering::Relaxed);
    let delivery_s = last_recv_ns.saturating_sub(published.start_ns) as f64 / 1e9;
    let publish_s = (published.end_ns - published.start_ns) as f64 / 1e9;

    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    put("subscribers", cfg.subscribers.to_string());
    put("connect_s", format!("{connect_s:.2}"));
    put("rate", format!("{}", cfg.rate));
    put("seconds", format!("{}", cfg.seconds));
    put("payload_bytes", cfg.payload_bytes.to_string());
    put("published", published.count.to_string());
    put("publish_s", format!("{publish_s:.3}"));
    put(
        "publish_rate",
        format!("{:.1}", published.count as f64 / publish_s.max(1e-9)),
    );
    put(
        "publisher_lag_max_ms",
        format!("{:.1}", published.max_lag.as_secs_f64() * 1e3),
    );
    put("publish_replies", pub_replies.ints.to_string());
    put("publish_errors", pub_replies.errors.to_string());
    put("expected", expected.to_string());
    put("delivered", delivered.to_string());
    put("lost", lost.to_string());
    put("subs_lost", subs_lost.to_string());
    put("dups", dups.to_string());
    put("unexpected", unexpected.to_string());
    put("disconnected", closed.to_string());
    put("drained", drained.to_string());
    put("drain_s", format!("{drain_s:.2}"));
    put("delivery_s", format!("{delivery_s:.3}"));
    put(
        "delivery_rate",
        format!("{:.0}", delivered as f64 / delivery_s.max(1e-9)),
    );
    let q = |x: Option<u64>| x.map_or("".to_string(), |v| v.to_string());
    put("p50_us", q(hist.quantile(0.50)));
    put("p99_us", q(hist.quantile(0.99)));
    put(
        "max_us",
        if hist.n > 0 {
            hist.max.to_string()
        } else {
            String::new()
        },
    );
    let window = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let ticks_to_us = 1e6 / cfg.clk_tck;
    let mut own_ticks = 0u64;
    for (i, (label, _)) in cfg.watch.iter().enumerate() {
        let d = match (cpu0.watched[i], cpu1.watched[i]) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        own_ticks += d.unwrap_or(0);
        put(
            &format!("cpu_s_{label}"),
            d.map_or(String::new(), |d| format!("{:.2}", d as f64 / cfg.clk_tck)),
        );
        put(
            &format!("cpu_us_per_msg_{label}"),
            match d {
                Some(d) if delivered > 0 => {
                    format!("{:.3}", d as f64 * ticks_to_us / delivered as f64)
                }
                _ => String::new(),
            },
        );
        put(
            &format!("rss_kb_{label}"),
            rss[i].map_or(String::new(), |r| r.to_string()),
        );
    }
    let self_ticks = match (cpu0.own, cpu1.own) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    put(
        "cpu_s_loadgen",
        format!("{:.2}", self_ticks as f64 / cfg.clk_tck),
    );
    put("window_s", format!("{window:.2}"));
    if let (Some((b0, s0)), Some((b1, s1))) = (cpu0.machine, cpu1.machine) {
        let ncpu = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cap = window * cfg.clk_tck * ncpu;
        let other = (b1.saturating_sub(b0)) as f64 - (own_ticks + self_ticks) as f64;
        put(
            "other_cpu_pct",
            format!("{:.1}", (other / cap * 100.0).max(0.0)),
        );
        put(
            "steal_pct",
            format!("{:.1}", s1.saturating_sub(s0) as f64 / cap * 100.0),
        );
    }
    if let Some(e) = &pub_replies.first_error {
        put("publish_first_error", e.replace(char::is_whitespace, "_"));
    }
    let line: Vec<String> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
    eprintln!(
        "pubsub_fanout: published {} in {publish_s:.2} s; delivered {delivered} of {expected} \
         ({drained} after {drain_s:.1} s of drain), {:.0} msg/s; lost {lost} ({subs_lost} subscribers lost any); \
         latency p50 {} µs, p99 {} µs, max {} µs",
        published.count,
        delivered as f64 / delivery_s.max(1e-9),
        q(hist.quantile(0.50)),
        q(hist.quantile(0.99)),
        hist.max
    );
    Ok(())
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(Failure::Usage(m)) => {
            if !m.is_empty() {
                eprintln!("pubsub_fanout: {m}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("pubsub_fanout: {e:?}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::SubscribeRefused(e)) => {
            println!("REFUSED subscribe {e}");
            eprintln!("pubsub_fanout: SUBSCRIBE refused: -{e}");
            ExitCode::from(3)
        }
        Err(Failure::PublishRefused(e)) => {
            println!("REFUSED publish {e}");
            eprintln!("pubsub_fanout: PUBLISH refused: -{e}");
            ExitCode::from(4)
        }
        Err(Failure::Io(what, e)) => {
            eprintln!("pubsub_fanout: {what}: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Run(m)) | Err(Failure::Usage(m)) => {
            eprintln!("pubsub_fanout: {m}");
            ExitCode::FAILURE
        }
    }
}
