//! Which node of a shard serves a command, per read policy.
//!
//! Writes always go to the master. Reads (commands the command table marks
//! read-only) follow the route's read policy, with Envoy's names:
//! `MASTER`, `PREFER_MASTER`, `REPLICA`, `PREFER_REPLICA`, `ANY`. Spreading
//! over several candidates uses a round-robin counter supplied by the caller
//! so the choice is cheap and even without any shared state.

use crate::config::ReadPolicy;
use crate::topology::Shard;

/// Pick the address that serves a command on `shard`. `healthy` says whether
/// a node is currently reachable; `rr` is a round-robin counter.
pub fn pick_node<'a>(
    shard: &'a Shard,
    policy: ReadPolicy,
    healthy: impl Fn(&str) -> bool,
    rr: usize,
) -> Result<&'a str, String> {
    let master = shard.master.as_str();
    let pick_replica = |only_healthy: bool| -> Option<&'a str> {
        let n = shard.replicas.len();
        (0..n)
            .map(|i| shard.replicas[(rr + i) % n].as_str())
            .find(|a| !only_healthy || healthy(a))
    };
    match policy {
        ReadPolicy::Master => Ok(master),
        ReadPolicy::PreferMaster => {
            if healthy(master) {
                Ok(master)
            } else {
                Ok(pick_replica(true).unwrap_or(master))
            }
        }
        ReadPolicy::Replica => pick_replica(true).ok_or_else(|| {
            format!("ERR no healthy replica for the shard of master {master} (read_policy REPLICA)")
        }),
        ReadPolicy::PreferReplica => Ok(pick_replica(true).unwrap_or(master)),
        ReadPolicy::Any => {
            let n = shard.replicas.len() + 1;
            let nodes = std::iter::once(master).chain(shard.replicas.iter().map(|s| s.as_str()));
            let all: Vec<&str> = nodes.collect();
            (0..n)
                .map(|i| all[(rr + i) % n])
                .find(|a| healthy(a))
                .map_or(Ok(master), Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> Shard {
        Shard {
            master: "m:1".into(),
            replicas: vec!["r:1".into(), "r:2".into()],
        }
    }

    #[test]
    fn master_policy_ignores_replicas() {
        let s = shard();
        for rr in 0..4 {
            assert_eq!(pick_node(&s, ReadPolicy::Master, |_| true, rr), Ok("m:1"));
        }
    }

    #[test]
    fn replica_policy_spreads_and_fails_without_replicas() {
        let s = shard();
        let picks: Vec<_> = (0..4)
            .map(|rr| pick_node(&s, ReadPolicy::Replica, |_| true, rr).unwrap())
            .collect();
        assert!(picks.contains(&"r:1") && picks.contains(&"r:2"));
        assert!(!picks.contains(&"m:1"));
        assert!(pick_node(&s, ReadPolicy::Replica, |a| a == "m:1", 0).is_err());
    }

    #[test]
    fn fallbacks() {
        let s = shard();
        assert_eq!(
            pick_node(&s, ReadPolicy::PreferReplica, |a| a == "m:1", 0),
            Ok("m:1")
        );
        assert_eq!(
            pick_node(&s, ReadPolicy::PreferMaster, |a| a != "m:1", 0),
            Ok("r:1")
        );
        assert_eq!(
            pick_node(&s, ReadPolicy::PreferMaster, |_| true, 0),
            Ok("m:1")
        );
        let any: Vec<_> = (0..3)
            .map(|rr| pick_node(&s, ReadPolicy::Any, |_| true, rr).unwrap())
            .collect();
        assert_eq!(any, vec!["m:1", "r:1", "r:2"]);
    }
}
