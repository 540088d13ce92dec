//! A history checker for single-key registers, written for histories where
//! each key has exactly one writer that writes strictly increasing values
//! (1, 2, 3, …) one at a time, and any number of readers.
//!
//! With one sequential writer per key, the order of a key's writes is their
//! value order, so linearizability reduces to interval checks:
//!
//! - **no future read**: a read returns 0 (nil) or a value whose write was
//!   invoked before the read completed;
//! - **no stale read**: a read returns at least the largest value whose write
//!   was acknowledged before the read was invoked;
//! - **no new-old inversion**: a read returns at least the largest value any
//!   other read returned before it was invoked (a value once visible is
//!   never un-done);
//! - **no lost write**: after the run, each key holds at least its last
//!   acknowledged value.
//!
//! A write that got an error has an unknown outcome that may take effect at
//! any time after its invocation, so a read that returns such a value is not
//! held against the proxy; those reads are counted.
//!
//! Redis replication is asynchronous: a master killed with `kill -9` can take
//! writes it acknowledged with it. A violation is attributed to Redis (and
//! reported apart) only when the key belongs to the killed master's shard, the
//! read was invoked after the kill, and every write the read missed was
//! invoked before the kill — writes the old master executed and the promoted
//! replica had not received.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Write {
    pub key: usize,
    pub value: u64,
    pub invoke: Instant,
    pub complete: Instant,
    /// `None`: acknowledged (`+OK`); `Some(reply)`: anything else.
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Read {
    pub key: usize,
    /// 0 for nil (before the key's first write).
    pub value: u64,
    pub invoke: Instant,
    pub complete: Instant,
}

/// A master killed during the run: the keys of its shard and when.
#[derive(Clone, Debug)]
pub struct Kill {
    pub keys: HashSet<usize>,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Report {
    pub writes_acked: usize,
    pub writes_failed: usize,
    pub reads: usize,
    /// Reads that returned the value of a write that got an error.
    pub reads_of_failed_writes: usize,
    /// Proxy violations: each a description.
    pub stale_reads: Vec<String>,
    pub future_reads: Vec<String>,
    pub lost_writes: Vec<String>,
    /// Violations explained by Redis losing writes on failover.
    pub redis_failover_loss: Vec<String>,
}

impl Report {
    pub fn operations(&self) -> usize {
        self.writes_acked + self.writes_failed + self.reads
    }

    pub fn violations(&self) -> usize {
        self.stale_reads.len() + self.future_reads.len() + self.lost_writes.len()
    }

    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "LINEARIZABILITY scenario={scenario} operations={} writes_acked={} writes_failed={} \
             reads={} reads_of_failed_writes={} stale_reads={} future_reads={} lost_acked_writes={} \
             redis_failover_loss={}",
            self.operations(),
            self.writes_acked,
            self.writes_failed,
            self.reads,
            self.reads_of_failed_writes,
            self.stale_reads.len(),
            self.future_reads.len(),
            self.lost_writes.len(),
            self.redis_failover_loss.len(),
        )
    }
}

/// One key's writes, indexed for the checks.
struct KeyWrites<'a> {
    /// By value (= invocation order).
    by_value: HashMap<u64, &'a Write>,
    /// Acknowledged writes by completion time.
    acked_by_complete: Vec<&'a Write>,
}

impl<'a> KeyWrites<'a> {
    /// Largest acknowledged value completed strictly before `t` (0 if none).
    fn acked_before(&self, t: Instant) -> u64 {
        let n = self.acked_by_complete.partition_point(|w| w.complete < t);
        self.acked_by_complete[..n]
            .iter()
            .map(|w| w.value)
            .max()
            .unwrap_or(0)
    }

    fn failed(&self, value: u64) -> bool {
        self.by_value.get(&value).is_some_and(|w| w.error.is_some())
    }

    /// Were all writes with values in `(from, to]` invoked before `t`?
    fn all_invoked_before(&self, from: u64, to: u64, t: Instant) -> bool {
        (from + 1..=to).all(|v| self.by_value.get(&v).is_none_or(|w| w.invoke < t))
    }
}

/// Check a history. `finals` is each key's value read after the run (0 for
/// nil); `kill` names a master killed during the run, if any.
pub fn check(
    writes: &[Write],
    reads: &[Read],
    finals: &HashMap<usize, u64>,
    kill: Option<&Kill>,
) -> Report {
    let mut report = Report::default();
    let mut per_key: HashMap<usize, KeyWrites> = HashMap::new();
    for w in writes {
        let k = per_key.entry(w.key).or_insert_with(|| KeyWrites {
            by_value: HashMap::new(),
            acked_by_complete: Vec::new(),
        });
        k.by_value.insert(w.value, w);
        if w.error.is_none() {
            report.writes_acked += 1;
            k.acked_by_complete.push(w);
        } else {
            report.writes_failed += 1;
        }
    }
    for k in per_key.values_mut() {
        k.acked_by_complete.sort_by_key(|w| w.complete);
    }
    let empty = KeyWrites {
        by_value: HashMap::new(),
        acked_by_complete: Vec::new(),
    };
    let redis_explains =
        |key: usize, read_invoke: Instant, missed_from: u64, missed_to: u64, kw: &KeyWrites| {
            kill.is_some_and(|k| {
                k.keys.contains(&key)
                    && read_invoke > k.at
                    && kw.all_invoked_before(missed_from, missed_to, k.at)
            })
        };

    let mut reads_by_key: HashMap<usize, Vec<&Read>> = HashMap::new();
    for r in reads {
        reads_by_key.entry(r.key).or_default().push(r);
    }
    report.reads = reads.len();
    for (key, mut rs) in reads_by_key {
        let kw = per_key.get(&key).unwrap_or(&empty);
        // Reads by completion time, for "largest value seen before t".
        let mut by_complete: Vec<&Read> = rs.clone();
        by_complete.sort_by_key(|r| r.complete);
        let mut seen_prefix_max = Vec::with_capacity(by_complete.len());
        let mut m = 0;
        for r in &by_complete {
            // A failed write's value may be re-ordered later; it does not
            // bind later reads.
            if !kw.failed(r.value) {
                m = m.max(r.value);
            }
            seen_prefix_max.push(m);
        }
        rs.sort_by_key(|r| r.invoke);
        for r in rs {
            if r.value != 0 {
                match kw.by_value.get(&r.value) {
                    Some(w) if w.invoke < r.complete => {}
                    _ => {
                        report.future_reads.push(format!(
                            "key {key}: read {} that was not written before the read completed",
                            r.value
                        ));
                        continue;
                    }
                }
            }
            if kw.failed(r.value) {
                report.reads_of_failed_writes += 1;
                continue;
            }
            let acked = kw.acked_before(r.invoke);
            let n = by_complete.partition_point(|x| x.complete < r.invoke);
            let seen = if n == 0 { 0 } else { seen_prefix_max[n - 1] };
            let floor = acked.max(seen);
            if r.value < floor {
                let what = format!(
                    "key {key}: read {} (invoked {:?} before the check), but {} was acknowledged \
                     and {} already read before it was invoked",
                    r.value,
                    r.invoke.elapsed(),
                    acked,
                    seen
                );
                if redis_explains(key, r.invoke, r.value, floor, kw) {
                    report.redis_failover_loss.push(what);
                } else {
                    report.stale_reads.push(what);
                }
            }
        }
    }

    let end = Instant::now();
    for (&key, kw) in &per_key {
        let last = kw
            .acked_by_complete
            .iter()
            .map(|w| w.value)
            .max()
            .unwrap_or(0);
        let f = finals.get(&key).copied().unwrap_or(0);
        if f < last && !kw.failed(f) {
            let what = format!("key {key}: holds {f} after the run, {last} was acknowledged");
            if redis_explains(key, end, f, last, kw) {
                report.redis_failover_loss.push(what);
            } else {
                report.lost_writes.push(what);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn w(base: Instant, value: u64, from: u64, to: u64, ok: bool) -> Write {
        Write {
            key: 0,
            value,
            invoke: at(base, from),
            complete: at(base, to),
            error: (!ok).then(|| "ERR".to_string()),
        }
    }

    fn r(base: Instant, value: u64, from: u64, to: u64) -> Read {
        Read {
            key: 0,
            value,
            invoke: at(base, from),
            complete: at(base, to),
        }
    }

    fn finals(v: u64) -> HashMap<usize, u64> {
        HashMap::from([(0, v)])
    }

    #[test]
    fn a_correct_history_passes() {
        let b = Instant::now();
        let writes = [w(b, 1, 0, 10, true), w(b, 2, 20, 30, true)];
        // Concurrent with write 2: either value is fine.
        let reads = [
            r(b, 0, 0, 5),
            r(b, 1, 12, 15),
            r(b, 1, 21, 25),
            r(b, 2, 22, 26),
            r(b, 2, 31, 35),
        ];
        let rep = check(&writes, &reads, &finals(2), None);
        assert_eq!(rep.violations(), 0, "{rep:?}");
        assert_eq!(rep.operations(), 7);
    }

    #[test]
    fn a_read_older_than_an_acknowledged_write_is_stale() {
        let b = Instant::now();
        let writes = [w(b, 1, 0, 10, true), w(b, 2, 20, 30, true)];
        let rep = check(&writes, &[r(b, 1, 40, 45)], &finals(2), None);
        assert_eq!(rep.stale_reads.len(), 1, "{rep:?}");
    }

    #[test]
    fn a_value_seen_is_never_undone() {
        let b = Instant::now();
        // Write 2 still in flight; one read sees it, a later one does not.
        let writes = [w(b, 1, 0, 10, true), w(b, 2, 20, 100, true)];
        let reads = [r(b, 2, 30, 35), r(b, 1, 40, 45)];
        let rep = check(&writes, &reads, &finals(2), None);
        assert_eq!(rep.stale_reads.len(), 1, "{rep:?}");
    }

    #[test]
    fn reading_an_unwritten_value_is_caught() {
        let b = Instant::now();
        let writes = [w(b, 1, 0, 10, true), w(b, 2, 50, 60, true)];
        let rep = check(
            &writes,
            &[r(b, 2, 20, 30), r(b, 7, 70, 80)],
            &finals(2),
            None,
        );
        assert_eq!(rep.future_reads.len(), 2, "{rep:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let b = Instant::now();
        let writes = [w(b, 1, 0, 10, true), w(b, 2, 20, 30, true)];
        let rep = check(&writes, &[], &finals(1), None);
        assert_eq!(rep.lost_writes.len(), 1, "{rep:?}");
    }

    #[test]
    fn failed_writes_have_unknown_outcomes() {
        let b = Instant::now();
        let writes = [
            w(b, 1, 0, 10, true),
            w(b, 2, 20, 30, false),
            w(b, 3, 40, 50, true),
        ];
        // Write 2 failed: it may apply late, after 3.
        let rep = check(&writes, &[r(b, 2, 60, 65)], &finals(2), None);
        assert_eq!(rep.violations(), 0, "{rep:?}");
        assert_eq!(rep.reads_of_failed_writes, 1);
    }

    #[test]
    fn losses_on_the_killed_shard_are_attributed_to_redis_only_when_they_fit() {
        let b = Instant::now();
        let writes = [
            w(b, 1, 0, 10, true),
            w(b, 2, 20, 30, true),
            w(b, 3, 200, 210, true),
        ];
        let kill = Kill {
            keys: HashSet::from([0]),
            at: at(b, 100),
        };
        // Write 2 ran on the old master before the kill; the new one lacks it.
        let rep = check(&writes, &[r(b, 1, 150, 160)], &finals(3), Some(&kill));
        assert_eq!(
            (rep.violations(), rep.redis_failover_loss.len()),
            (0, 1),
            "{rep:?}"
        );
        // Write 3 was invoked after the kill: losing it is not Redis's doing.
        let rep = check(&writes, &[r(b, 1, 250, 260)], &finals(3), Some(&kill));
        assert_eq!(rep.stale_reads.len(), 1, "{rep:?}");
        // Another shard's key: never attributed to the kill.
        let other = Kill {
            keys: HashSet::from([9]),
            at: at(b, 100),
        };
        let rep = check(&writes, &[r(b, 1, 150, 160)], &finals(3), Some(&other));
        assert_eq!(rep.stale_reads.len(), 1, "{rep:?}");
    }
}
