//! The stable fuzzing pass of `cargo test`: every seed of `corpus/TARGET/` through its
//! target, then a bounded, seeded mutation pass (bit flips, byte and integer edits,
//! insertions, deletions, splices of two seeds), each input under an allocation bound.
//! libFuzzer (`cargo fuzz run TARGET`) explores far longer; an input it finds crashing
//! goes into the corpus, where this test replays it for ever.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cinder_fuzz::{TARGETS, Target};

/// Counts the bytes held and the peak since the last reset.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one input may allocate beyond what was held before it: 64 MiB plus 64 bytes per
/// input byte (a loader may hold a few copies of its file and what it decodes).
fn allocation_bound(input: &[u8]) -> usize {
    (64 << 20) + 64 * input.len()
}

/// Mutations per target of the pass (seeded: every run tries the same inputs).
const MUTATIONS: usize = 300;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `input` through `target`; the failure (panic or allocation over the bound) as
/// text.
fn run_one((name, run): Target, input: &[u8]) -> Result<(), String> {
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    std::panic::catch_unwind(AssertUnwindSafe(|| run(input))).map_err(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("{name}: panic: {text}")
    })?;
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if used > allocation_bound(input) {
        return Err(format!(
            "{name}: allocated {used} bytes for a {}-byte input (bound {})",
            input.len(),
            allocation_bound(input)
        ));
    }
    Ok(())
}

/// The workspace's seeded generator drives the mutation pass's choices.
struct Rng(cinder_runtime::synthetic::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers that break length and count fields.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX >> 1,
    u64::MAX,
];

/// One to four random edits of `input` (`other`: a second seed to splice from).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            2 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.below(4)];
                let bytes = if rng.below(2) == 0 {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                let end = (at + width).min(out.len());
                out.splice(at..end, bytes[..width].iter().copied());
            }
            3 => {
                let text = ["-1", "1e39", "NaN", "99", "\"..\"", "{}", "[]", "0"];
                let t = text[rng.below(text.len())].as_bytes();
                let end = (at + rng.below(8)).min(out.len());
                out.splice(at..end, t.iter().copied());
            }
            4 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// Saves a failing input beside the test's output, for the corpus once fixed.
fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("cinder-fuzz-failures")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("crash-{:016x}", fxhash(input)));
    std::fs::write(&path, input).unwrap();
    path
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn every_target_survives_its_corpus_and_a_mutation_pass() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let name = target.0;
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "corpus/{name} is empty");
        let mut rng = Rng(cinder_runtime::synthetic::Rng::new(fxhash(name.as_bytes())));
        let mutated = (0..MUTATIONS).map(|_| {
            let a = &seeds[rng.below(seeds.len())];
            let b = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, a, b)
        });
        let inputs: Vec<Vec<u8>> = seeds.iter().cloned().chain(mutated).collect();
        for input in inputs {
            if let Err(e) = run_one(*target, &input) {
                failures.push(format!(
                    "{e} (input saved to {})",
                    save_failure(name, &input).display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
