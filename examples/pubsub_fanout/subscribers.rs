//! The subscriber connections: one mio event loop per thread.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

use crate::hist::Histogram;
use crate::resp::{command, parse_payload, reply, BadResp, Item, Reply};
use crate::{Config, Failure};

#[derive(Default)]
pub struct Shared {
    pub acked: AtomicUsize,
    pub delivered: AtomicU64,
    pub last_recv_ns: AtomicU64,
    pub stop: AtomicBool,
    /// The first thing that went wrong on a subscriber, for the main thread.
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    pub fn fail(&self, what: String) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(what);
        }
    }
    pub fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

pub struct Sub {
    pub stream: MioStream,
    pub pending: Vec<u8>,
    pub acked: bool,
    pub closed: bool,
    pub next_seq: u64,
    pub distinct: u64,
    pub dups: u64,
}

/// What one subscriber thread saw.
pub struct SubStats {
    pub hist: Histogram,
    /// Distinct sequence numbers each subscriber received.
    pub distinct: Vec<u64>,
    pub dups: u64,
    pub closed: usize,
    pub unexpected: u64,
}

pub fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

pub fn connect_subscriber(addr: SocketAddr, subscribe: &[u8]) -> io::Result<MioStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(subscribe)?;
    s.set_nonblocking(true)?;
    Ok(MioStream::from_std(s))
}

pub struct Worker {
    pub poll: Poll,
    pub events: Events,
    pub subs: Vec<Sub>,
    pub scratch: Vec<u8>,
    pub stats: SubStats,
    pub channel: Vec<u8>,
}

impl Worker {
    /// Reads whatever is ready (waiting at most `timeout`) and processes it.
    pub fn pump(&mut self, timeout: Duration, shared: &Shared, base: Instant) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut delivered = 0u64;
        let mut acked = 0usize;
        let mut last_ns = 0u64;
        for ev in self.events.iter() {
            let Some(sub) = self.subs.get_mut(ev.token().0) else {
                continue;
            };
            if sub.closed {
                continue;
            }
            loop {
                match sub.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        sub.closed = true;
                        self.stats.closed += 1;
                        if !sub.acked {
                            shared.fail("a subscriber's connection was closed before its SUBSCRIBE was acknowledged".into());
                        }
                        break;
                    }
                    Ok(n) => {
                        let recv_ns = now_ns(base);
                        last_ns = recv_ns;
                        sub.pending.extend_from_slice(&self.scratch[..n]);
                        let (d, a) = consume(sub, &self.channel, recv_ns, &mut self.stats, shared);
                        delivered += d;
                        acked += a;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        sub.closed = true;
                        self.stats.closed += 1;
                        if !sub.acked {
                            shared.fail(format!("a subscriber's connection failed: {e}"));
                        }
                        break;
                    }
                }
            }
        }
        if delivered > 0 {
            shared.delivered.fetch_add(delivered, Ordering::Relaxed);
            shared.last_recv_ns.fetch_max(last_ns, Ordering::Relaxed);
        }
        if acked > 0 {
            shared.acked.fetch_add(acked, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Processes every complete reply in `sub.pending`; returns (messages, acks).
pub fn consume(
    sub: &mut Sub,
    channel: &[u8],
    recv_ns: u64,
    stats: &mut SubStats,
    shared: &Shared,
) -> (u64, usize) {
    let (mut delivered, mut acked) = (0, 0);
    let mut at = 0;
    loop {
        let (r, next) = match reply(&sub.pending, at) {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(BadResp(e)) => {
                shared.fail(format!("a subscriber received malformed RESP: {e}"));
                sub.pending.clear();
                return (delivered, acked);
            }
        };
        at = next;
        match r {
            Reply::Triple([Item::Bulk(b"message"), Item::Bulk(ch), Item::Bulk(p)])
                if ch == channel =>
            {
                let Some((seq, send_ns)) = parse_payload(p) else {
                    stats.unexpected += 1;
                    continue;
                };
                delivered += 1;
                stats.hist.record(recv_ns.saturating_sub(send_ns) / 1000);
                if seq >= sub.next_seq {
                    sub.distinct += 1;
                    sub.next_seq = seq + 1;
                } else {
                    sub.dups += 1;
                }
            }
            Reply::Triple([Item::Bulk(b"subscribe"), Item::Bulk(ch), Item::Int(_)])
                if ch == channel && !sub.acked =>
            {
                sub.acked = true;
                acked += 1;
            }
            Reply::Single(Item::Error(e)) => {
                let text = String::from_utf8_lossy(e).into_owned();
                if sub.acked {
                    stats.unexpected += 1;
                } else {
                    shared.fail(format!("SUBSCRIBE answered -{text}"));
                }
            }
            _ => stats.unexpected += 1,
        }
    }
    sub.pending.drain(..at);
    (delivered, acked)
}

pub fn run_worker(
    count: usize,
    cfg: &Config,
    shared: &Shared,
    base: Instant,
) -> Result<SubStats, Failure> {
    let mut w = Worker {
        poll: Poll::new().map_err(Failure::io("mio poll"))?,
        events: Events::with_capacity(1024),
        subs: Vec::with_capacity(count),
        scratch: vec![0; 64 * 1024],
        stats: SubStats {
            hist: Histogram::new(),
            distinct: Vec::new(),
            dups: 0,
            closed: 0,
            unexpected: 0,
        },
        channel: cfg.channel.as_bytes().to_vec(),
    };
    let subscribe = command(&[b"SUBSCRIBE", cfg.channel.as_bytes()]);
    while w.subs.len() < count {
        let batch = cfg.connect_batch.min(count - w.subs.len());
        for _ in 0..batch {
            let mut stream = connect_subscriber(cfg.sub_addr, &subscribe).map_err(|e| {
                let what = format!(
                    "subscriber {} of this thread: connect/SUBSCRIBE to {}",
                    w.subs.len() + 1,
                    cfg.sub_addr
                );
                shared.fail(format!("{what}: {e}"));
                Failure::Io(what, e)
            })?;
            let token = Token(w.subs.len());
            w.poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
                .map_err(Failure::io("mio register"))?;
            w.subs.push(Sub {
                stream,
                pending: Vec::new(),
                acked: false,
                closed: false,
                next_seq: 0,
                distinct: 0,
                dups: 0,
            });
        }
        w.pump(Duration::ZERO, shared, base)
            .map_err(Failure::io("mio poll"))?;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    while !shared.stop.load(Ordering::Relaxed) {
        w.pump(Duration::from_millis(20), shared, base)
            .map_err(Failure::io("mio poll"))?;
    }
    w.stats.distinct = w.subs.iter().map(|s| s.distinct).collect();
    w.stats.dups = w.subs.iter().map(|s| s.dups).sum();
    Ok(w.stats)
}
