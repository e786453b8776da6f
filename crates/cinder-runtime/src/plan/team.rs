//! A session's threads: the caller and its helpers run each parallel stage together.
//!
//! A stage of one image lasts tens of microseconds, so what a parallel stage costs
//! beyond its work is waking threads. A general work-stealing pool entered from outside
//! (rayon's `install`) hands the whole run to a pool thread, parks the caller and wakes it
//! at the end, and its idle threads fall asleep within microseconds: every run then pays
//! two or three wake-ups, each an inter-processor interrupt (tens of microseconds on a
//! virtual machine). Here the caller is thread 0 of every stage, and helpers that finish a
//! stage spin on the next one for [`SPIN`] before they sleep, as ONNX Runtime's and
//! OpenMP's threads do: back-to-back stages and runs start without a wake-up.
//!
//! Helpers join a job while it is open and the caller never waits for one that has not
//! joined: a job (blocks claimed from a shared counter) is complete once the caller has run
//! it, so a helper that the scheduler has not run yet (another process on its core)
//! delays nothing; the caller closes the job and waits only for the helpers inside it.
//!
//! A job is a `Fn(thread)` borrowed from the caller's stack; [`Team::run`] returns only
//! once no helper is inside it (a helper's panic is raised in the caller), which is what
//! makes lending the borrow to other threads sound.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper looks for the next job before it sleeps: longer than the gap
/// between the stages of a run and between runs called in a loop, short enough that an
/// idle session gives its cores back at once.
const SPIN: Duration = Duration::from_micros(200);

/// Spin iterations between two reads of the clock (and yields to other threads).
const SPINS_PER_CHECK: u32 = 64;

type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// The caller's job, its lifetime erased; valid while the caller waits in [`Team::run`].
#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);

/// What the caller and its helpers share.
struct State {
    /// Bumped once per job (and to stop); a helper looks for a job when it sees a new value.
    epoch: AtomicU64,
    /// The epoch of the job helpers may join, or 0 once the caller has closed it.
    open: AtomicU64,
    /// Written by the caller before it opens the job, read by helpers that joined it.
    job: UnsafeCell<Option<JobPtr>>,
    /// Helpers inside the current job (or checking whether they may join it).
    active: AtomicUsize,
    /// Helpers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
    /// The first panic of a helper in the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `job` is written only by the caller while no helper reads it (no job is open
// and no helper is active), and read by helpers only after they joined the open job that
// it belongs to (sequentially consistent `open` and `active`); the pointee is `Sync`.
unsafe impl Sync for State {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for State {}

/// The helper threads of one session.
pub(crate) struct Team {
    state: Arc<State>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Team {
    /// A team of `threads` threads: the caller and `threads - 1` helpers.
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let state = Arc::new(State {
            epoch: AtomicU64::new(0),
            open: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut team = Team {
            state,
            helpers: Vec::with_capacity(threads.saturating_sub(1)),
        };
        for index in 1..threads.max(1) {
            let state = Arc::clone(&team.state);
            let helper = std::thread::Builder::new()
                .name(format!("cinder-{index}"))
                .spawn(move || help(&state, index))?;
            // On an error `team` drops here and stops the helpers started so far.
            team.helpers.push(helper);
        }
        Ok(team)
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(0)` on the caller and `job(t)` on each helper `t` that joins in time,
    /// and returns when the caller and every helper that joined have finished; a panic in
    /// any of them is raised here. The job must complete the work from thread 0 alone (as
    /// a loop claiming blocks from a shared counter does): helpers only share it.
    pub fn run(&self, job: &Job<'_>) {
        if self.helpers.is_empty() {
            return job(0);
        }
        let state = &*self.state;
        // SAFETY: only the lifetime is erased; the pointer is not used after this call
        // returns, and it returns only once the job is closed and no helper is inside it.
        let erased: *const Job<'static> = unsafe { std::mem::transmute(job as *const Job<'_>) };
        // SAFETY: no helper reads `job` now: no job is open and none is active.
        unsafe { *state.job.get() = Some(JobPtr(erased)) };
        let epoch = state.epoch.load(Ordering::Relaxed) + 1;
        state.open.store(epoch, Ordering::SeqCst);
        state.epoch.store(epoch, Ordering::SeqCst);
        wake_sleepers(state);
        let own = catch_unwind(AssertUnwindSafe(|| job(0)));
        state.open.store(0, Ordering::SeqCst);
        spin_until(|| state.active.load(Ordering::SeqCst) == 0, None);
        let helper_panic = lock(&state.panic).take();
        if let Err(panic) = own {
            resume_unwind(panic);
        }
        if let Some(panic) = helper_panic {
            resume_unwind(panic);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let state = &*self.state;
        state.stop.store(true, Ordering::SeqCst);
        state.epoch.fetch_add(1, Ordering::SeqCst);
        wake_sleepers(state);
        for helper in self.helpers.drain(..) {
            // A helper catches its jobs' panics, so joining cannot fail in practice; a
            // failure here has nothing left to report to.
            let _ = helper.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes the helpers that went to sleep. Sequentially consistent with [`wait_for_job`]:
/// either the caller sees a sleeper here, or the sleeper sees the new epoch before it
/// waits.
fn wake_sleepers(state: &State) {
    if state.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = lock(&state.lock);
        state.wake.notify_all();
    }
}

/// Spins until `done()`, yielding now and then; with a `limit`, gives up after it and
/// returns whether `done()` became true.
fn spin_until(done: impl Fn() -> bool, limit: Option<Duration>) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..SPINS_PER_CHECK {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return false;
        }
        // Lets a thread that shares this core (more threads than cores) run.
        std::thread::yield_now();
    }
}

/// Waits until the epoch differs from `seen`: spins for [`SPIN`], then sleeps.
fn wait_for_job(state: &State, seen: u64) -> u64 {
    let changed = || state.epoch.load(Ordering::Acquire) != seen;
    if !spin_until(changed, Some(SPIN)) {
        let mut guard = lock(&state.lock);
        state.sleepers.fetch_add(1, Ordering::SeqCst);
        while state.epoch.load(Ordering::SeqCst) == seen {
            guard = state
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
    state.epoch.load(Ordering::Acquire)
}

/// A helper's life: join each new job as thread `index` while it is open, until the team
/// stops.
fn help(state: &State, index: usize) {
    let mut seen = 0;
    loop {
        seen = wait_for_job(state, seen);
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        // Announced before the check, so that the caller, once it has closed the job,
        // either sees this helper active and waits, or this helper sees the job closed.
        state.active.fetch_add(1, Ordering::SeqCst);
        if state.open.load(Ordering::SeqCst) == seen {
            // SAFETY: written before the job was opened; valid until this helper leaves
            // (`active` below), which the caller waits for.
            if let Some(JobPtr(job)) = unsafe { *state.job.get() } {
                // SAFETY: see above.
                let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
                if let Err(panic) = result {
                    lock(&state.panic).get_or_insert(panic);
                }
            }
        }
        state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks claimed from a counter, as the plan's stages do: every block runs exactly
    /// once whichever threads join, and no thread runs one job twice.
    #[test]
    fn every_block_runs_once_and_no_thread_twice() {
        for threads in 1..5 {
            let team = Team::new(threads).unwrap();
            for blocks in [0, 1, 3, 64] {
                for _ in 0..100 {
                    let next = AtomicUsize::new(0);
                    let done: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
                    let runs: Vec<AtomicUsize> =
                        (0..threads).map(|_| AtomicUsize::new(0)).collect();
                    team.run(&|t| {
                        runs[t].fetch_add(1, Ordering::Relaxed);
                        while let Some(d) = done.get(next.fetch_add(1, Ordering::Relaxed)) {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
                    assert_eq!(
                        runs[0].load(Ordering::Relaxed),
                        1,
                        "the caller runs the job"
                    );
                    assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) <= 1));
                }
            }
        }
    }

    /// Helpers that went to sleep wake for the next job and take their share: the
    /// caller waits inside the job until both helpers have joined.
    #[test]
    fn helpers_that_slept_wake_for_the_next_job() {
        let team = Team::new(3).unwrap();
        for _ in 0..3 {
            std::thread::sleep(SPIN * 5);
            let joined = AtomicUsize::new(0);
            team.run(&|_| {
                joined.fetch_add(1, Ordering::SeqCst);
                while joined.load(Ordering::SeqCst) < 3 {
                    std::hint::spin_loop();
                }
            });
            assert_eq!(joined.load(Ordering::SeqCst), 3);
        }
    }

    #[test]
    fn a_helpers_panic_is_raised_in_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            // The caller waits in the job until the helper has joined (and failed).
            let joined = AtomicUsize::new(0);
            team.run(&|t| {
                joined.fetch_add(1, Ordering::SeqCst);
                assert_ne!(t, 1, "helper fails");
                while joined.load(Ordering::SeqCst) < 2 {
                    std::hint::spin_loop();
                }
            });
        }));
        assert!(caught.is_err());
        let hits = AtomicUsize::new(0);
        team.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert!((1..=2).contains(&hits.load(Ordering::Relaxed)));
    }
}
