//! The fuzz targets without libFuzzer: every saved crash in
//! `fuzz/regressions/<target>/` and every committed seed in
//! `fuzz/corpus/<target>/seed-*` goes through the same checks the fuzz
//! targets run (`fuzz/src/checks.rs`, included below), and so do a few
//! hundred inputs mutated from the seeds by a fixed-seed generator, so CI
//! exercises the invariants on every run without nightly flags or a fuzzer.
//! Coverage-guided fuzzing itself: `scripts/fuzz.sh`.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

/// Files to replay for `target`: its regressions, then its seeds.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for (dir, seeds_only) in [
        (fuzz.join("regressions").join(target), false),
        (fuzz.join("corpus").join(target), true),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                !seeds_only
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("seed-"))
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Run `check` on `data`; the panic message when it fails.
fn run(check: Check, data: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| check(data))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few random edits of `seed` (and a splice from `other`), kept short.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed[..seed.len().min(4096)].to_vec();
    const TOKENS: [&[u8]; 10] = [
        b"\r\n", b"*", b"$", b"-1", b"0", b"\"", b" ", b"QUIT", b"EXEC", b"MULTI",
    ];
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if at < v.len() => {
                let end = v.len().min(at + 1 + rng.below(16));
                v.drain(at..end);
            }
            3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = other.len().min(from + 1 + rng.below(64));
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    v
}

fn replay(target: &str, check: Check, mutations: usize) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds or regressions for {target}");
    let mut failures = Vec::new();
    let mut seeds = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(msg) = run(check, &data) {
            failures.push(format!("{}: {msg}", f.display()));
        }
        seeds.push(data);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    for i in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let data = mutate(&mut rng, seed, other);
        if let Err(msg) = run(check, &data) {
            failures.push(format!("mutation {i} of {target}: {msg}\ninput: {data:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        files.len() + mutations,
        failures.join("\n")
    );
}

#[test]
fn request_decoder_regressions_and_seeds() {
    replay("request_decoder", checks::request_decoder, 2000);
}

#[test]
fn session_regressions_and_seeds() {
    replay("session", checks::session, 2000);
}

#[test]
fn splitter_merge_regressions_and_seeds() {
    replay("splitter_merge", checks::splitter_merge, 2000);
}
